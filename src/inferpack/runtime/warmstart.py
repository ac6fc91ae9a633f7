"""Warm start: persisted access statistics, and the hottest models loaded again at the next start.

With `server.warm_start` the registry's access statistics (`inferpack.runtime.accessstats`) are read from
`server.access_stats_file` at start, written back every `access_stats_save_s` and at shutdown (atomically:
a crash leaves the previous file whole), and a background task loads the hottest known models that fit
the free memory budget, one at a time on the load lane (niced threads, one load slot of
`max_concurrent_loads`), hottest first. The server reports ready without waiting for them: requests are
served meanwhile (a request for a model the warm start has not reached yet loads it as usual), and the
warm start never evicts anything: it only fills free budget, checked before each load.

`inferpack_warm_start_pending` (models the warm start still means to try) and
`inferpack_warm_start_loads_total` show its progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from inferpack.errors import InferpackError
from inferpack.jsonfile import write_atomic
from inferpack.runtime.accessstats import AccessStats
from inferpack.runtime.registry import PROTECTED_AFTER_HITS, ModelRegistry
from inferpack.settings import ServerSettings

log = logging.getLogger("inferpack.warmstart")
SAVED_MODELS = 100_000  # the file keeps at most this many models' statistics (hottest first)


def stats_path(settings: ServerSettings) -> Path:
    """The access statistics file: the configured one, else one per repository, host and port in
    ~/.cache/inferpack/access/ (servers sharing a repository on one host keep separate statistics)."""
    if settings.access_stats_file:
        return Path(settings.access_stats_file).expanduser()
    key = f"{settings.repository}|{settings.host}:{settings.port}"
    name = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "inferpack" / "access" / f"{name}.json"


def read_stats(path: Path, half_life_s: float) -> AccessStats:
    """The statistics in `path`; empty when there is none yet, or when it is unreadable or invalid (logged:
    statistics are a hint, never a reason not to start; the next write replaces a bad file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return AccessStats(half_life_s)
    except OSError as exc:
        log.warning("cannot read access statistics %s (%s): starting without them", path, exc)
        return AccessStats(half_life_s)
    try:
        return AccessStats.from_json(json.loads(text), half_life_s)
    except ValueError as exc:  # JSONDecodeError included
        log.warning("ignoring access statistics %s: %s (it is rewritten at the next save)", path, exc)
        return AccessStats(half_life_s)


def stats_text(stats: AccessStats, now: float) -> str:
    """The file's content for these statistics."""
    return json.dumps(stats.to_json(now, SAVED_MODELS)) + "\n"


def write_stats(path: Path, text: str) -> None:
    """Write the statistics file atomically (the folder is made when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)


async def warm_load(registry: ModelRegistry, ranked: list[str], max_models: int) -> list[str]:
    """Load the hottest of `ranked` that the server knows and that fit the free budget, one at a time;
    returns those loaded. A model that does not fit is skipped (a colder, smaller one may fit); a model
    that fails to load is logged and skipped; loaded, failed or loading models are left alone."""
    done: list[str] = []
    todo = [m for m in ranked if registry.knows(m)][: max(0, max_models)]
    registry.stats.warm_start_pending = len(todo)
    try:
        for model_id in todo:
            registry.stats.warm_start_pending -= 1
            entry = registry.entry(model_id)
            if entry.state in ("ready", "loading", "failed", "unloading"):
                continue
            free = registry.free_budget_bytes()
            try:
                if free is not None and registry.estimate(model_id) > free:
                    continue
                await registry.load(model_id, cold=True)  # its first request warms it up (eager)
            except InferpackError as exc:
                log.warning("warm start: %s not loaded: %s", model_id, exc)
                continue
            # its history says it is hot: not on probation (segmented LRU) like a model used once
            if registry.access_score(model_id) >= PROTECTED_AFTER_HITS:
                entry.hits = max(entry.hits, PROTECTED_AFTER_HITS)
            registry.stats.warm_start_loads += 1
            done.append(model_id)
    finally:
        registry.stats.warm_start_pending = 0
    return done


class WarmStart:
    """Reads the statistics into the registry, warm-loads in the background, saves periodically and at
    shutdown. `start` and `close` run in the server's lifespan."""

    def __init__(
        self, registry: ModelRegistry, settings: ServerSettings, wall: Callable[[], float] = time.time
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.path = stats_path(settings)
        self._wall = wall
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Read the statistics, start the warm-start loads and the periodic save (returns at once)."""
        stats = read_stats(self.path, self.settings.access_half_life_s)
        self.registry.access = stats
        ranked = stats.ranked(self._wall())
        log.info("warm start: %d models in the access statistics %s", len(ranked), self.path)
        # pending from now on (not from the task's first step): whoever polls it never sees a false 0
        known = [m for m in ranked if self.registry.knows(m)]
        self.registry.stats.warm_start_pending = min(len(known), self.settings.warm_start_max_models)
        loop = asyncio.get_running_loop()

        async def loads() -> None:
            started = time.perf_counter()
            try:
                done = await warm_load(self.registry, ranked, self.settings.warm_start_max_models)
            except Exception:  # never let the warm start take the server down
                log.exception("warm start failed")
                return
            log.info("warm start: loaded %d models in %.1f s", len(done), time.perf_counter() - started)

        async def saves() -> None:
            while True:
                await asyncio.sleep(self.settings.access_stats_save_s)
                await self._save()

        self._tasks = [
            loop.create_task(loads(), name="warm-start"),
            loop.create_task(saves(), name="access-stats-save"),
        ]

    async def _save(self) -> None:
        try:
            text = stats_text(self.registry.access, self._wall())  # on the loop: requests record there
            await asyncio.get_running_loop().run_in_executor(None, write_stats, self.path, text)
        except OSError as exc:
            log.warning("cannot write access statistics %s: %s", self.path, exc)

    async def close(self) -> None:
        """Stop the background tasks and write the statistics a last time."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._save()
