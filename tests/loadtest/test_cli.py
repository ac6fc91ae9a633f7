"""`inferpack bench` end to end through the command line, against the fake server.

Most tests call the bench sub-app directly (the top-level CLI imports torch, seconds of start-up); one
test checks that `inferpack bench` is registered."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import cast

import pytest
from rich.console import Console
from typer.testing import CliRunner

from inferpack.loadtest import histograms as H
from inferpack.loadtest.cli import app
from inferpack.loadtest.report import PLOTS
from inferpack.loadtest.result import BenchResult, load_result

from .conftest import FakeServer

runner = CliRunner(env={"COLUMNS": "160"})  # wide enough that rich does not wrap table rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_help_lists_the_commands() -> None:
    from inferpack.cli import app as inferpack_app

    result = runner.invoke(inferpack_app, ["bench", "--help"])
    assert result.exit_code == 0
    for command in ("run", "worker", "aggregate", "compare", "report"):
        assert command in result.output
    run_help = runner.invoke(app, ["run", "--help"])
    assert run_help.exit_code == 0 and "--rate" in run_help.output


def test_run_writes_json_table_and_report_with_plots(fake_server: FakeServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["run", "--url", fake_server.url, "--num-models", "50", "--traffic", "zipf"]
    args += ["--rate", "0.5:60,120", "--duration", "1.2", "--warmup", "0.2", "--interval", "0.25"]
    args += ["--out", str(out), "--no-live"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for text in ("throughput", "P99", "slowest models", "latency (from intended send)"):
        assert text in result.output
    saved = load_result(out / "result.json")
    assert saved.metadata.traffic == {"kind": "zipf", "zipf_s": 1.0}
    assert saved.metadata.load_shape["kind"] == "open"
    assert saved.metadata.versions["hdrhistogram"]
    assert 100 <= saved.total_requests() <= 125  # 0.5 s at 60/s + 0.7 s at 120/s
    raw = json.loads((out / "result.json").read_text())
    assert H.decode(raw["histograms"]["latency"]).get_total_count() == saved.total_requests()
    report = (out / "report.md").read_text()
    for plot in PLOTS:
        assert f"]({plot})" in report
        data = (out / plot).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_bad_options_exit_with_a_message(fake_server: FakeServer) -> None:
    args = ["run", "--url", fake_server.url, "--num-models", "3", "--rate", "5", "--users", "2"]
    result = runner.invoke(app, [*args, "--no-live"])
    assert result.exit_code != 0
    assert "not both" in str(result.exception)


def test_worker_logs_aggregate_and_compare(fake_server: FakeServer, tmp_path: Path) -> None:
    logs = []
    for index in range(2):
        args = ["worker", "--target", fake_server.url, "--num-models", "20", "--users", "4"]
        args += ["--requests", "40", "--worker-index", str(index), "--workers", "2", "--progress", "none"]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        log = tmp_path / f"worker-{index}.log"
        log.write_text("some log line\n" + res.stdout)
        logs.append(log)
    merged_path = tmp_path / "merged.json"
    res = runner.invoke(app, ["aggregate", *map(str, logs), "--out", str(merged_path)])
    assert res.exit_code == 0, res.output
    merged = load_result(merged_path)
    assert merged.total_requests() == 40 and len(merged.workers) == 2
    assert "workers" in res.output and "loop busy" in res.output
    assert len(fake_server.calls) == 40
    res = runner.invoke(app, ["compare", str(merged_path), str(logs[0])])
    assert res.exit_code == 0, res.output
    assert "throughput" in res.output and "P99" in res.output


def test_local_worker_processes(fake_server: FakeServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["run", "--url", fake_server.url, "--num-models", "100", "--mode", "seq"]
    args += ["--users", "2", "--workers", "2", "--out", str(out), "--no-report"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    merged = load_result(out / "result.json")
    parts = [load_result(out / "workers" / f"worker-{i}.json") for i in range(2)]
    assert {w.pid for w in merged.workers} == {p.workers[0].pid for p in parts}
    assert len({w.pid for w in merged.workers}) == 2
    assert sorted(m for _, m in fake_server.calls) == sorted(merged.models)
    assert len(fake_server.calls) == 100 == merged.total_requests()
    assert H.same_counts(H.decode(merged.histograms.latency), H.merge(p.histograms.latency for p in parts))


def test_rnd_mode_sends_n_requests_at_the_set_rate(fake_server: FakeServer, tmp_path: Path) -> None:
    out = tmp_path / "rnd"
    args = ["run", "--url", fake_server.url, "--num-models", "1000", "--mode", "rnd", "--requests", "40"]
    result = runner.invoke(app, [*args, "--rate", "80", "--out", str(out), "--no-report", "--no-live"])
    assert result.exit_code == 0, result.output
    saved = load_result(out / "result.json")
    assert saved.metadata.mode == "rnd" and saved.metadata.load_shape["kind"] == "open"
    assert saved.total_requests() == 40 == len(fake_server.calls)
    # 40 requests due every 12.5 ms: the last is due at 0.4875 s, so the window is about half a second.
    assert 0.48 <= saved.window_s() < 1.5


def test_worker_from_flags_like_the_kubernetes_job(fake_server: FakeServer, tmp_path: Path) -> None:
    plan = {
        "created_by": "test",
        "groups": [
            {
                "name": "g",
                "resources": {"cpu": 1, "memory_mb": 512},
                "servers": [{"name": "s0", "models": ["p", "q"]}, {"name": "s1", "models": ["r"]}],
            }
        ],
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    # The deploy package's Job runs: worker --target ROUTER --plan PLAN --worker-index I --workers N.
    args = ["worker", "--target", fake_server.url, "--plan", str(tmp_path / "plan.json"), "--mode", "seq"]
    result = runner.invoke(
        app,
        [*args, "--progress", "none"],
        env={"INFERPACK_BENCH_WORKER_INDEX": "1", "INFERPACK_BENCH_WORKERS": "2", "COLUMNS": "160"},
    )
    assert result.exit_code == 0, result.output
    # Worker 1 of 2 takes the second half of the plan's models, through the router URL.
    assert [m for _, m in fake_server.calls] == ["r"]
    line = result.stdout.strip().splitlines()[-1]
    assert json.loads(line)["workers"][0]["index"] == 1


def test_live_view_merges_workers_snapshots() -> None:
    from rich.console import Console

    from inferpack.loadtest.display import LiveView
    from inferpack.loadtest.recorder import Snapshot

    def snap(done: int, values_ms: list[float]) -> Snapshot:
        h = H.new_histogram(H.INTERVAL_SIG_FIGS)
        for v in values_ms:
            H.record_us(h, v * 1000)
        return Snapshot(1.0, done, 1, done, 1, 0.5, H.encode(h))

    console = Console(record=True, width=120, file=io.StringIO())
    view = LiveView(console, "t", duration_s=10, requests=None)
    view.update(0, snap(10, [5.0] * 10))
    view.update(1, snap(30, [50.0] * 30))
    console.print(view._render())
    text = console.export_text()
    # 40 done, 2 errors, (10 + 30) / 0.5 s = 80 req/s; the P50 of all 40 samples is the slow worker's
    # 50 ms (50.2: the top of its 2-figure bucket), not an average of the two workers' P50s.
    row = next(line for line in text.splitlines() if "1.0/10s" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells == ["1.0/10s", "40", "2", "80", "50.2", "50.2", "50.2"]


def test_bench_sends_the_first_token_of_the_token_file(fake_server: FakeServer, tmp_path: Path) -> None:
    fake_server.token = "tenant-token"
    tokens = tmp_path / "tokens"  # the servers' tokens file format (the Secret key the Job mounts)
    tokens.write_text("# inference tokens\n\ntenant-token\nother-token\n")
    worker = ["worker", "--url", fake_server.url, "--num-models", "3", "--mode", "seq", "--progress", "none"]
    refused = runner.invoke(app, worker)
    assert refused.exit_code == 0, refused.output
    assert json.loads(refused.stdout.strip().splitlines()[-1])["errors"] == {"http 401": 3}
    # The Kubernetes Job sets INFERPACK_BENCH_TOKEN_FILE (a custom --bench-command gets it too).
    sent = runner.invoke(app, worker, env={"INFERPACK_BENCH_TOKEN_FILE": str(tokens), "COLUMNS": "160"})
    assert sent.exit_code == 0, sent.output
    assert json.loads(sent.stdout.strip().splitlines()[-1])["errors"] == {}
    # Local worker processes read the file themselves; the token is in no file they write.
    out = tmp_path / "out"
    args = ["run", "--url", fake_server.url, "--num-models", "10", "--mode", "seq", "--workers", "2"]
    local = runner.invoke(app, [*args, "--token-file", str(tokens), "--out", str(out), "--no-report"])
    assert local.exit_code == 0, local.output
    assert load_result(out / "result.json").error_count() == 0
    assert not [p for p in out.rglob("*") if p.is_file() and "tenant-token" in p.read_text()]
    empty = tmp_path / "empty"
    empty.write_text("# none\n")
    bad = runner.invoke(app, [*worker, "--token-file", str(empty)])
    assert bad.exit_code != 0 and "holds no token" in str(bad.exception or bad.output)


def test_the_no_report_note_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # Printed as rich markup, "pip install 'inferpack[report]'" lost "[report]".
    import inferpack.loadtest.cli as bench_cli
    from inferpack.errors import ConfigError

    def missing() -> None:
        raise ConfigError("a report needs matplotlib (absent)", hint="pip install 'inferpack[report]'")

    monkeypatch.setattr(bench_cli, "_report_writer", missing)
    console = Console(record=True, width=200)
    bench_cli._report(cast(BenchResult, None), Path("unused"), console)
    assert "pip install 'inferpack[report]'" in console.export_text()
