"""The one wiring every explorer uses: controls -> update(**values) -> (readout HTML, Figure).

An explorer is a ``VBox`` of [controls, readout, plot]. It keeps handles that tests
(and the browser test) use: ``box.controls`` (name -> widget), ``box.readout`` (an
``HTML`` widget holding the computed figures) and ``box.figure`` (the last Figure drawn).
No math here: ``update`` calls the library's compute_* and plot_* functions.
"""

from __future__ import annotations

from typing import Callable

import ipywidgets as W
from matplotlib.figure import Figure


def build_explorer(controls: dict[str, W.ValueWidget],
                   update: Callable[..., tuple[str, Figure | None]],
                   *, title: str = "") -> W.VBox:
    """Wire ``controls`` to ``update`` and return the explorer box.

    Args:
        controls: name -> control; ``update`` is called with ``name=value`` keywords.
        update: returns (readout HTML, Figure or None) for the current values.
        title: optional heading shown above the controls.
    """
    readout = W.HTML()
    plot = W.Output()
    box = W.VBox()

    def refresh(**values):
        html, fig = update(**values)
        readout.value = html
        box.figure = fig
        plot.clear_output(wait=True)
        from IPython import get_ipython
        if fig is not None and get_ipython() is not None:  # in a kernel: draw into the Output
            with plot:
                from IPython.display import display  # the widget shows; the library never does
                display(fig)

    header = [W.HTML(f"<b>{title}</b>")] if title else []
    controls_box = W.VBox(list(controls.values()))
    box.children = (*header, controls_box, readout, plot)
    box.controls = controls
    box.readout = readout
    box.plot = plot
    box.figure = None
    for control in controls.values():
        control.observe(lambda _change: refresh(**{k: c.value for k, c in controls.items()}), names="value")
    refresh(**{k: c.value for k, c in controls.items()})
    return box
