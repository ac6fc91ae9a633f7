"""Rich output: the live progress view, the final result tables, and the comparison of two results."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from inferpack.loadtest import histograms as H
from inferpack.loadtest.recorder import Snapshot
from inferpack.loadtest.result import BenchResult


class LiveView:
    """Live throughput and recent latency, merged across workers from their progress snapshots."""

    def __init__(self, console: Console, title: str, duration_s: float | None, requests: int | None) -> None:
        self._console = console
        self._title = title
        self._duration_s = duration_s
        self._requests = requests
        self._latest: dict[int, Snapshot] = {}
        self._live = Live(self._render(), console=console, refresh_per_second=4, transient=True)

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def update(self, index: int, snap: Snapshot) -> None:
        """Take a worker's latest snapshot and redraw."""
        self._latest[index] = snap
        self._live.update(self._render())

    def _render(self) -> Table:
        snaps = list(self._latest.values())
        done = sum(s.done for s in snaps)
        errors = sum(s.errors for s in snaps)
        rps = sum(s.new_done / s.period_s for s in snaps)
        recent = H.summarize(H.merge((s.recent_hist for s in snaps), H.INTERVAL_SIG_FIGS))
        elapsed = max((s.elapsed_s for s in snaps), default=0.0)
        table = Table(title=self._title, show_header=True)
        for col in ("elapsed", "done", "errors", "req/s (last 0.5 s)", "P50 ms", "P99 ms", "max ms"):
            table.add_column(col, justify="right")
        if elapsed < 0:
            when = f"warm-up {-elapsed:.1f}s left"
        elif self._duration_s:
            when = f"{min(elapsed, self._duration_s):.1f}/{self._duration_s:g}s"
        else:
            when = f"{elapsed:.1f}s"
        total = f"{done}/{self._requests}" if self._requests else str(done)
        table.add_row(
            when,
            total,
            str(errors),
            f"{rps:.0f}",
            f"{recent.p50_ms:.1f}",
            f"{recent.p99_ms:.1f}",
            f"{recent.max_ms:.1f}",
        )
        return table


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def result_tables(result: BenchResult, top: int = 10) -> Group:
    """The final tables: summary, latency percentiles, errors, cold/warm, slowest models, warnings."""
    meta = result.metadata
    s = result.compute_summary()
    head = Table(title="inferpack bench", show_header=False)
    head.add_column("what")
    head.add_column("value")
    head.add_row("target", meta.target)
    head.add_row("mode / API", f"{meta.mode} / {meta.api}")
    head.add_row("load", meta.load_description)
    traffic = ", ".join(f"{k}={v}" for k, v in meta.traffic.items())
    head.add_row("traffic", f"{traffic} over {meta.models} model(s)")
    head.add_row("workers", str(len(result.workers)))
    head.add_row("requests", f"{s['requests']} ({s['errors']} errors, {s['error_rate']:.2%})")
    head.add_row("throughput", f"{s['throughput_rps']:.1f} req/s over {s['window_s']:.1f} s")

    lat = Table(title="latency (ms)")
    lat.add_column("histogram")
    for col in ("count", "P50", "P90", "P95", "P99", "P99.9", "max"):
        lat.add_column(col, justify="right")
    rows = [("latency (from intended send)", result.histograms.latency)]
    rows.append(("service (from actual send)", result.histograms.service))
    rows.append(("cold (triggered a load)", result.histograms.cold))
    rows.append(("warm", result.histograms.warm))
    rows.append(("failed requests", result.histograms.errors))
    for name, enc in rows:
        x = H.summarize(H.decode(enc))
        if x.count == 0 and name != rows[0][0]:
            continue
        lat.add_row(
            name,
            str(x.count),
            *(_ms(v) for v in (x.p50_ms, x.p90_ms, x.p95_ms, x.p99_ms, x.p999_ms, x.max_ms)),
        )
    parts: list[Any] = [head, lat]
    if len(result.workers) > 1:
        per = Table(title="workers")
        for col in ("worker", "host", "requests", "req/s", "loop busy"):
            per.add_column(col, justify="right" if col not in ("host",) else "left")
        for w in result.workers:
            rate = w.requests / w.measured_s if w.measured_s else 0.0
            busy = w.cpu_s / w.wall_s if w.wall_s else 0.0
            per.add_row(str(w.index), w.hostname, str(w.requests), f"{rate:.1f}", f"{busy:.0%}")
        parts.append(per)
    if result.errors:
        err = Table(title="errors by status / kind")
        err.add_column("error")
        err.add_column("count", justify="right")
        err.add_column("share", justify="right")
        for key, count in sorted(result.errors.items(), key=lambda kv: -kv[1]):
            err.add_row(key, str(count), f"{count / max(s['requests'], 1):.2%}")
        parts.append(err)
    slow = result.slowest_models(top)
    if slow:
        models = Table(title=f"slowest models (top {len(slow)} by mean latency)")
        for col in ("model", "requests", "errors", "cold", "mean ms", "max ms"):
            models.add_column(col, justify="right" if col != "model" else "left")
        for name, st in slow:
            models.add_row(
                name, str(st.count), str(st.errors), str(st.cold), _ms(st.mean_ms), _ms(st.max_us / 1000)
            )
        parts.append(models)
    for warning in result.warnings:
        parts.append(Text(f"warning: {warning}", style="yellow"))
    return Group(*parts)


def _delta(a: float, b: float) -> tuple[str, str]:
    diff = b - a
    pct = f"{diff / a:+.1%}" if a else "n/a"
    return f"{diff:+.2f}", pct


def compare_table(a: BenchResult, b: BenchResult, name_a: str = "A", name_b: str = "B") -> Table:
    """Side-by-side headline figures of two results, with absolute and relative differences."""
    sa, sb = a.compute_summary(), b.compute_summary()
    table = Table(title=f"compare {name_a} → {name_b}")
    for col in ("metric", name_a, name_b, "Δ", "Δ%"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    rows: list[tuple[str, float, float]] = [
        ("throughput req/s", sa["throughput_rps"], sb["throughput_rps"]),
        ("requests", sa["requests"], sb["requests"]),
        ("error rate %", 100 * sa["error_rate"], 100 * sb["error_rate"]),
    ]
    labels = {"p50_ms": "P50", "p90_ms": "P90", "p95_ms": "P95", "p99_ms": "P99", "p999_ms": "P99.9"}
    labels |= {"max_ms": "max", "mean_ms": "mean"}
    for key, label in labels.items():
        rows.append((f"latency {label} ms", sa["latency_ms"][key], sb["latency_ms"][key]))
    for key in ("cold", "warm"):
        rows.append((f"{key} requests", sa[key], sb[key]))
    for name, va, vb in rows:
        table.add_row(name, f"{va:.2f}", f"{vb:.2f}", *_delta(float(va), float(vb)))
    return table
