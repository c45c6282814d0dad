"""The slider-driven experiment: pick a fine-tune, see the committed result or train it live.

Controls: task (+K), r, lora_alpha, rsLoRA, targets, quantization, lr, steps and Run.
A grid point (one the committed sweeps ran, 3 seeds) shows its result at once: mean ±
se and the seeds' learning curves. Any other point says so; Run trains it live (seed 0)
and draws its curve over the committed curves of the nearest grid point as it goes.
A run blocks the kernel like any cell; the kernel's interrupt (■) cancels it and leaves
the explorer usable, and a control moved during a run takes effect when it ends.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace

import ipywidgets as W

from lora_lab.experiments.analysis import mean_curve, point_key, points
from lora_lab.experiments.engine import ExperimentConfig, run_experiment
from lora_lab.experiments.plots import plot_curves
from lora_lab.experiments.sweep import BASE, all_records

TASK_OPTIONS = (("QA format (chapter 05)", ("qa", 0)), ("cipher, K = 4", ("cipher", 4)),
                ("cipher, K = 8", ("cipher", 8)), ("cipher, K = 16", ("cipher", 16)))
QUANT_OPTIONS = (("none (fp32 base)", None), ("NF4", "nf4"), ("FP4", "fp4"), ("int4", "int4"))
RANKS = (1, 2, 4, 8, 16, 32, 64)
ALPHAS = (1, 2, 4, 8, 16, 32, 64, 128)
LRS = (1e-3, 2e-3, 5e-3, 1e-2, 2e-2)
STEPS = (20, 40, 80, 160)


def config_from_controls(task, r, lora_alpha, use_rslora, targets, quantization, lr, steps) -> ExperimentConfig:
    """The :class:`ExperimentConfig` (seed 0) the explorer's controls describe."""
    name, k = task
    return replace(BASE, task=name, k=k, r=r, lora_alpha=float(lora_alpha), use_rslora=use_rslora,
                   targets=targets, recipe="lora" if quantization is None else "qlora",
                   quant_type=quantization or "nf4", lr=lr, steps=steps,
                   warmup_steps=min(BASE.warmup_steps, steps // 10) or 1, seed=0)


def committed_point(config: ExperimentConfig, records: list[dict]):
    """The committed point (all seeds) with this config but the seed, or None."""
    key = point_key(asdict(config))
    match = [r for r in records if point_key(r["config"]) == key]
    return points(match)[0] if match else None


def nearest_point(config: ExperimentConfig, records: list[dict]):
    """The committed rank-sweep point of the same task closest in r (the curves to compare with)."""
    grid = {point_key(asdict(replace(BASE, task=config.task, k=config.k, r=r))) for r in RANKS}
    same = [r for r in records if point_key(r["config"]) in grid]
    return min(points(same), key=lambda p: abs(p.config["r"] - config.r)) if same else None


def _describe(c: ExperimentConfig) -> str:
    task = "QA" if c.task == "qa" else f"cipher K={c.k}"
    base = "fp32" if c.recipe == "lora" else c.quant_type.upper()
    return (f"{task}, r={c.r}, α={c.lora_alpha:g}{' (rsLoRA)' if c.use_rslora else ''}, {c.targets}, "
            f"{base} base, lr={c.lr:g}, {c.steps} steps")


def experiment_explorer(records: list[dict] | None = None) -> W.VBox:
    """Build the explorer (a VBox [title, controls, readout, plot], like every course explorer).

    Handles kept for tests and the browser test: ``box.controls`` (name -> widget, the Run
    button included), ``box.readout``, ``box.figure``, ``box.run()`` (press Run),
    ``box.live`` (config id -> live record) and ``box.config()`` (the current config).
    """
    records = all_records() if records is None else records
    opt = dict(continuous_update=False, style={"description_width": "90px"})
    controls = {
        "task": W.Dropdown(options=TASK_OPTIONS, value=("qa", 0), description="task", **{"style": opt["style"]}),
        "r": W.SelectionSlider(options=RANKS, value=BASE.r, description="r", **opt),
        "lora_alpha": W.SelectionSlider(options=ALPHAS, value=int(BASE.lora_alpha), description="lora_alpha", **opt),
        "use_rslora": W.Checkbox(value=False, description="rsLoRA (α/√r)"),
        "targets": W.Dropdown(options=("all-linear", "attention", "mlp", "attn-qkv"), value=BASE.targets,
                              description="targets", style=opt["style"]),
        "quantization": W.Dropdown(options=QUANT_OPTIONS, value=None, description="4-bit base", style=opt["style"]),
        "lr": W.SelectionSlider(options=LRS, value=BASE.lr, description="lr", **opt),
        "steps": W.SelectionSlider(options=STEPS, value=BASE.steps, description="steps", **opt),
    }
    button = W.Button(description="Run", button_style="primary", icon="play",
                      tooltip="train this point live (seed 0)")
    readout, plot, box = W.HTML(), W.Output(), W.VBox()
    box.live = {}

    def config() -> ExperimentConfig:
        return config_from_controls(**{k: c.value for k, c in controls.items()})

    def draw(c: ExperimentConfig, live_curve=None, note: str = "") -> None:
        curves, point = {}, committed_point(c, records)
        ref = point or nearest_point(c, records)
        if ref is not None:
            tag = "this point" if point is not None else f"grid r={ref.config['r']}"
            for rec in ref.records:
                curves[f"{tag}, seed {rec['config']['seed']}"] = rec["curve"]
            curves[f"{tag}, mean"] = mean_curve(ref.records)
        if live_curve is None and c.id in box.live:
            live_curve = box.live[c.id]["curve"]
        if live_curve:
            curves["live run (seed 0)"] = live_curve
        fig = plot_curves(curves, title=_describe(c), highlight="live run (seed 0)")
        box.figure = fig
        parts = []
        if point is not None:
            parts.append(f"<b>committed</b> ({point.n_seeds} seeds): exact match "
                         f"{100 * point.mean:.1f}% ± {100 * point.se:.1f}")
        else:
            parts.append("not a committed grid point: press <b>Run</b> to train it live (seed 0)")
        if c.id in box.live:
            rec = box.live[c.id]
            parts.append(f"<b>live</b> (seed 0): {100 * rec['metric']:.1f}% ± {100 * rec['metric_se']:.1f} "
                         f"in {rec['seconds']:.0f} s; story loss {rec['story_loss_before']:.2f} → "
                         f"{rec['story_loss_after']:.2f}")
        if note:
            parts.append(note)
        readout.value = " &nbsp;|&nbsp; ".join(parts) + f"<br><small>{_describe(c)}</small>"
        plot.clear_output(wait=True)
        from IPython import get_ipython
        if get_ipython() is not None:
            from IPython.display import display
            with plot:
                display(fig)

    def run(_button=None) -> dict | None:
        c = config()
        button.disabled = True
        t0, live = time.time(), []

        def on_step(step, loss):
            live.append(loss)
            if step % 20 == 0 and step < c.steps:
                draw(c, live, note=f"training… step {step}/{c.steps}")

        try:
            rec = run_experiment(c, on_step=on_step)
        except KeyboardInterrupt:
            draw(c, live, note=f"cancelled at step {len(live)}/{c.steps} after {time.time() - t0:.0f} s")
            return None
        finally:
            button.disabled = False
        box.live[c.id] = rec
        draw(c)
        return rec

    button.on_click(run)
    for control in controls.values():
        control.observe(lambda _change: draw(config()), names="value")
    box.children = (W.HTML("<b>The slider-driven experiment: choose a fine-tune, then Run</b>"),
                    W.VBox([*controls.values(), button]), readout, plot)
    box.controls = {**controls, "run": button}
    box.readout, box.plot, box.figure = readout, plot, None
    box.run, box.config = run, config
    draw(config())
    return box
