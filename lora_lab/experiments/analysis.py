"""From records to claims: points with error bars, and verdicts computed from them.

A *point* is every record whose config agrees except for the seed. Its value is the mean
held-out exact match over seeds, and its error bar the standard error of that mean,

    se = sqrt( max(s² / m,  p̄ (1 - p̄) / (n m)) )

with s² the variance over the m seeds and n held-out examples per seed: the spread over
seeds when it is larger, and never less than the binomial noise of n·m answers (with 3
seeds, s² alone can be small by luck). Two points differ when |Δ| > 2 se_Δ,
se_Δ = sqrt(se_a² + se_b²); otherwise the verdict is "no detectable difference".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

CONFIG_KEYS = ("task", "k", "recipe", "quant_type", "r", "lora_alpha", "use_rslora", "targets", "init",
               "lr", "steps", "batch_size", "warmup_steps", "optimizer", "train_examples", "eval_examples",
               "story_examples")
Z = 2.0  # |Δ| / se_Δ above which two points are called different (≈ 95%)


def point_key(config: dict) -> tuple:
    """The config without its seed: what the seeds of one point share."""
    return tuple(config.get(k) for k in CONFIG_KEYS)


def select(records: Iterable[dict], **where) -> list[dict]:
    """Records whose config has every ``field=value`` given (values compared with ==)."""
    return [r for r in records if all(r["config"].get(k) == v for k, v in where.items())]


def mean_se(values: Sequence[float], n_eval: int | None = None) -> tuple[float, float]:
    """(mean, standard error of the mean) of per-seed values; see the module docstring."""
    m = len(values)
    if m == 0:
        raise ValueError("mean_se needs at least one value")
    mean = sum(values) / m
    var = sum((v - mean) ** 2 for v in values) / (m - 1) if m > 1 else 0.0
    floor = mean * (1 - mean) / (n_eval * m) if n_eval else 0.0
    return mean, math.sqrt(max(var / m, floor))


@dataclass(frozen=True)
class Point:
    """One grid point: its config (seed dropped), seeds, and the mean ± se of a quantity."""

    config: dict
    seeds: tuple[int, ...]
    mean: float
    se: float
    values: tuple[float, ...]
    records: tuple[dict, ...]

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)


def points(records: Iterable[dict], value: Callable[[dict], float] | str = "metric") -> list[Point]:
    """Group records into points (same config but the seed) and summarize ``value`` over seeds.

    ``value`` is a record key ("metric", "story_loss_after", ...) or a function of a record.
    The binomial floor of :func:`mean_se` applies to "metric" only.
    """
    get = (lambda r: r[value]) if isinstance(value, str) else value
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(point_key(r["config"]), []).append(r)
    out = []
    for recs in groups.values():
        recs = sorted(recs, key=lambda r: r["config"]["seed"])
        vals = [float(get(r)) for r in recs]
        n_eval = recs[0]["n_eval"] if value == "metric" else None
        mean, se = mean_se(vals, n_eval)
        cfg = {k: v for k, v in recs[0]["config"].items() if k != "seed"}
        out.append(Point(cfg, tuple(r["config"]["seed"] for r in recs), mean, se, tuple(vals), tuple(recs)))
    return out


def series(records: Iterable[dict], x: str, value: Callable[[dict], float] | str = "metric",
           **where) -> list[Point]:
    """The points of ``records`` matching ``where``, sorted by config field ``x``."""
    return sorted(points(select(records, **where), value), key=lambda p: p.config[x])


def one(records: Iterable[dict], value: Callable[[dict], float] | str = "metric", **where) -> Point:
    """The single point matching ``where`` (ValueError if none or several)."""
    ps = points(select(records, **where), value)
    if len(ps) != 1:
        raise ValueError(f"expected one point for {where}, found {len(ps)}")
    return ps[0]


@dataclass(frozen=True)
class Verdict:
    """a vs b: the difference, its standard error, z, and the call."""

    a: str
    b: str
    diff: float
    se: float

    @property
    def z(self) -> float:
        return self.diff / self.se if self.se > 0 else math.copysign(math.inf, self.diff) if self.diff else 0.0

    @property
    def call(self) -> str:
        if self.z > Z:
            return f"{self.a} > {self.b}"
        if self.z < -Z:
            return f"{self.a} < {self.b}"
        return "no detectable difference"


def compare(a: Point, b: Point, a_name: str = "a", b_name: str = "b") -> Verdict:
    """Is point a above, below, or indistinguishable from point b (at |z| > 2)?"""
    return Verdict(a_name, b_name, a.mean - b.mean, math.sqrt(a.se ** 2 + b.se ** 2))


def best(ps: Sequence[Point]) -> Point:
    """The point with the highest mean."""
    if not ps:
        raise ValueError("best() needs at least one point")
    return max(ps, key=lambda p: p.mean)


def indistinguishable_from_best(ps: Sequence[Point]) -> list[Point]:
    """The points within 2 se_Δ of the best one (the best included): what the data cannot rank."""
    top = best(ps)
    return [p for p in ps if p is top or compare(top, p).z <= Z]


def forgetting(record: dict) -> float:
    """Increase of the held-out story loss (nats per token) during fine-tuning."""
    return record["story_loss_after"] - record["story_loss_before"]


def mean_update_norm(record: dict) -> float:
    """Mean over adapted layers of ‖ΔW‖_F / ‖W‖_F."""
    v = list(record["update_norms"].values())
    return sum(v) / len(v)


def mean_curve(ps_records: Sequence[dict], smooth: int = 1) -> list[float]:
    """The per-step training loss averaged over seeds (optionally a running mean of ``smooth`` steps)."""
    curves = [r["curve"] for r in ps_records]
    n = min(len(c) for c in curves)
    avg = [sum(c[i] for c in curves) / len(curves) for i in range(n)]
    if smooth <= 1:
        return avg
    return [sum(avg[max(0, i - smooth + 1):i + 1]) / (i + 1 - max(0, i - smooth + 1)) for i in range(n)]


def divergence_step(curve: Sequence[float], reference: Sequence[float], *, rel: float = 0.10,
                    smooth: int = 10) -> int | None:
    """First step after which ``curve`` stays more than ``rel`` above ``reference`` (both
    smoothed by a running mean of ``smooth`` steps); None if it never leaves it."""
    def run_mean(c):
        return [sum(c[max(0, i - smooth + 1):i + 1]) / (i + 1 - max(0, i - smooth + 1)) for i in range(len(c))]

    a, b = run_mean(curve), run_mean(reference)
    n = min(len(a), len(b))
    above = [a[i] > b[i] * (1 + rel) for i in range(n)]
    for i in range(n):
        if all(above[i:]):
            return i
    return None
