"""The figure helper every chapter's plots use.

Plots return a matplotlib ``Figure`` built without pyplot (no global state, so a notebook cell
shows exactly the figure it made) and draw on a caller's ``ax`` when one is given.
"""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure


def figure_and_axes(ax: Axes | None = None, size=(6.4, 3.8), *, constrained: bool = True) -> tuple[Figure, Axes]:
    """``(ax.figure, ax)`` when ``ax`` is given, else a new one-axes ``Figure`` of ``size`` inches."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=size, layout="constrained" if constrained else None)
    return fig, fig.subplots()
