"""A Markdown report with PNG plots (matplotlib, Agg backend: no display needed) for one result."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from inferpack.loadtest import histograms as H
from inferpack.loadtest.result import BenchResult
from inferpack.loadtest.shapes import OpenLoop

PLOTS = ("throughput.png", "latency_over_time.png", "latency_cdf.png", "models.png")


def _plain_log(ax: Axes, axis: str) -> None:
    """Log scale with plain numbers (20, 50, 100) instead of 2x10^1 labels that collide."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    # Label the 2x and 5x minor ticks too, so a range within one decade still has numbers.
    target.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:e}"[0] in "25" else ""))


def _label(
    ax: Axes, xlabel: str, ylabel: str, title: str, *, grid: Literal["major", "both"] = "major"
) -> None:
    """Axis labels, title and a light grid: the same look on every plot."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which=grid)


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _throughput(result: BenchResult, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    t = [iv.t_s for iv in result.series]
    ax.plot(t, [iv.count / result.interval_s for iv in result.series], label="completed req/s")
    ax.plot(t, [iv.errors / result.interval_s for iv in result.series], label="errors/s", color="tab:red")
    if result.metadata.load_shape.get("kind") == "open" and t:
        # The offered load (the schedule): completions below it mean the server fell behind.
        shape = OpenLoop.model_validate(result.metadata.load_shape)
        end = result.metadata.duration_s or t[-1] + result.interval_s
        xs = [x for x in t if x < end]
        ys = [shape.rate_at(x) for x in xs]
        ax.plot(xs, ys, label="offered req/s", color="gray", linestyle="--", drawstyle="steps-post")
    _label(ax, "seconds since measurement start", "requests/s", "Throughput over time")
    ax.legend()
    _save(fig, path)


def _latency_over_time(result: BenchResult, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    t: list[float] = []
    series: dict[str, list[float]] = {"P50": [], "P90": [], "P99": [], "max": []}
    for iv in result.series:
        s = H.summarize(H.decode(iv.hist))
        if s.count == 0:
            continue
        t.append(iv.t_s)
        for key, value in (("P50", s.p50_ms), ("P90", s.p90_ms), ("P99", s.p99_ms), ("max", s.max_ms)):
            series[key].append(value)
    for key, values in series.items():
        ax.plot(t, values, label=key, linestyle=":" if key == "max" else "-")
    _plain_log(ax, "y")
    title = f"Latency percentiles per {result.interval_s:g} s interval"
    _label(ax, "seconds since measurement start", "latency (ms)", title, grid="both")
    ax.legend()
    _save(fig, path)


def _cdf(result: BenchResult, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for name, enc in (
        ("from intended send", result.histograms.latency),
        ("service time", result.histograms.service),
    ):
        xs, ys = H.cdf(H.decode(enc))
        if xs:
            ax.step(xs, ys, where="post", label=name)
    ax.set_xscale("log")
    _label(ax, "latency (ms)", "fraction of requests ≤ x", "Latency CDF", grid="both")
    ax.legend()
    _save(fig, path)


def _models(result: BenchResult, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    stats = sorted(result.models.values(), key=lambda s: -s.count)
    counts = [s.count for s in stats]
    if counts:
        left.plot(range(1, len(counts) + 1), counts, marker="." if len(counts) < 200 else None)
        _plain_log(left, "x")
        _plain_log(left, "y")
    title = f"Requests per model ({len(counts)} models asked)"
    _label(left, "model rank by requests", "requests", title, grid="both")
    ok = [s for s in stats if s.count > s.errors]
    if ok:
        right.scatter([s.count for s in ok], [s.mean_ms for s in ok], s=6, alpha=0.5)
        _plain_log(right, "x")
    _label(right, "requests to the model", "mean latency (ms)", "Per-model mean latency", grid="both")
    _save(fig, path)


def write_report(result: BenchResult, out_dir: Path, title: str = "inferpack bench report") -> Path:
    """Write `report.md` and its PNG plots into `out_dir`; returns the report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _throughput(result, out_dir / PLOTS[0])
    _latency_over_time(result, out_dir / PLOTS[1])
    _cdf(result, out_dir / PLOTS[2])
    _models(result, out_dir / PLOTS[3])
    path = out_dir / "report.md"
    path.write_text(render_markdown(result, title))
    return path


def render_markdown(result: BenchResult, title: str) -> str:
    """The report text; plots are referenced by their file names next to it."""
    m = result.metadata
    s = result.compute_summary()
    lines = [f"# {title}", ""]
    lines += ["| | |", "|---|---|"]
    traffic = ", ".join(f"{k}={v}" for k, v in m.traffic.items())
    stop = (
        f"{m.duration_s:g} s" if m.duration_s else (f"{m.requests} requests" if m.requests else "each once")
    )
    rows = [
        ("started", m.started_at),
        ("target", m.target),
        ("mode / API", f"{m.mode} / {m.api}"),
        ("load", f"{m.load_description}; warm-up {m.warmup_s:g} s; measured {stop}"),
        ("traffic", f"{traffic} over {m.models} model(s)"),
        ("workers", f"{len(result.workers)} ({', '.join(sorted({w.hostname for w in result.workers}))})"),
        ("versions", ", ".join(f"{k} {v}" for k, v in m.versions.items())),
        ("machine", f"{m.machine.get('platform')}, {m.machine.get('cpus')} CPUs"),
    ]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "## Results", ""]
    lines.append(
        f"**{s['throughput_rps']:.1f} req/s** over {s['window_s']:.1f} s; {s['requests']} requests, "
        f"{s['errors']} errors ({s['error_rate']:.2%}); cold/warm: {s['cold']}/{s['warm']}."
    )
    lines += [
        "",
        "| latency (ms) | count | P50 | P90 | P95 | P99 | P99.9 | max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, enc in (
        ("from intended send", result.histograms.latency),
        ("service time", result.histograms.service),
        ("cold", result.histograms.cold),
        ("warm", result.histograms.warm),
    ):
        x = H.summarize(H.decode(enc))
        if x.count:
            vals = " | ".join(
                f"{v:.2f}" for v in (x.p50_ms, x.p90_ms, x.p95_ms, x.p99_ms, x.p999_ms, x.max_ms)
            )
            lines.append(f"| {name} | {x.count} | {vals} |")
    if result.errors:
        lines += ["", "| error | count |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(result.errors.items(), key=lambda kv: -kv[1])]
    slow = result.slowest_models(10)
    if slow:
        lines += ["", "Slowest models by mean latency:", ""]
        lines += ["| model | requests | errors | cold | mean ms | max ms |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {n} | {st.count} | {st.errors} | {st.cold} | {st.mean_ms:.2f} | {st.max_us / 1000:.2f} |"
            for n, st in slow
        ]
    if result.warnings:
        lines += ["", "Warnings:", ""] + [f"- {w}" for w in result.warnings]
    lines += [
        "",
        "Latency is measured from each request's intended send time (no coordinated omission); all",
        "percentiles come from HDR histograms merged exactly across workers.",
        "",
        "## Plots",
        "",
    ]
    lines += [f"![{p.removesuffix('.png')}]({p})" for p in PLOTS]
    return "\n".join(lines) + "\n"
