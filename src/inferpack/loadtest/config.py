"""The whole description of a run, as data. The CLI builds it from flags; `--workers N` hands the same
config to N worker processes (or containers), each told its index, and each takes its share."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from inferpack.jsonfile import StrictModel, read_json_model
from inferpack.loadtest.protocol import DEFAULT_CONTEXT, DEFAULT_QUESTION, Api
from inferpack.loadtest.shapes import ClosedLoop, LoadShape
from inferpack.loadtest.targets import LoadTarget
from inferpack.loadtest.traffic import TrafficKind

Mode = Literal["seq", "rnd", "bmk"]


class TrafficSpec(StrictModel):
    """Which model each request asks for."""

    kind: TrafficKind = "uniform"
    zipf_s: float = Field(default=1.0, ge=0, description="Zipf exponent (1.0: classic; 0: uniform).")
    trace: list[int] | None = Field(
        default=None, description="replay: indices into `models`, in request order (from the CSV)."
    )


class BenchConfig(StrictModel):
    """A complete, self-contained run description (models and target already resolved)."""

    mode: Mode = "bmk"
    api: Api = "seed"
    target: LoadTarget
    models: list[str] = Field(min_length=1)
    traffic: TrafficSpec = Field(default_factory=TrafficSpec)
    shape: LoadShape = Field(default_factory=lambda: ClosedLoop(users=1), discriminator="kind")
    duration_s: float | None = Field(default=None, gt=0, description="Measured seconds (after warm-up).")
    requests: int | None = Field(default=None, ge=1, description="Measured requests (after warm-up).")
    warmup_s: float = Field(default=0.0, ge=0)
    timeout_s: float = Field(default=30.0, gt=0)
    interval_s: float = Field(default=1.0, gt=0, description="Time-series bucket width.")
    seed: int = 0
    question: str = DEFAULT_QUESTION
    context: str = DEFAULT_CONTEXT

    @model_validator(mode="after")
    def _stop_rule(self) -> BenchConfig:
        if self.mode == "seq":
            if self.duration_s is not None or self.requests is not None:
                raise ValueError("seq sends every (server, model) pair once: no --duration/--requests")
            if self.warmup_s:
                raise ValueError("seq has no warm-up (every pair is sent exactly once)")
        elif (self.duration_s is None) == (self.requests is None):
            raise ValueError("give exactly one of --duration or --requests")
        if self.traffic.kind == "replay" and not self.traffic.trace:
            raise ValueError("replay traffic needs a trace")
        return self

    def seq_pairs(self) -> list[tuple[str, str]]:
        """(base URL, model) pairs of the seq mode, in order."""
        return self.target.pairs(self.models)


def save_config(config: BenchConfig, path: Path) -> None:
    """Write a run config as JSON (what a worker process or container reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.model_dump_json() + "\n")


def load_config(path: Path) -> BenchConfig:
    """Read a run config written by `save_config`."""
    return read_json_model(path, BenchConfig, "bench config")
