"""Repository health: degraded and recovered once each, capped backoff, and the recovery loop (driven by an
injected sleeper and probe: no clock, no sleeps); a local folder that becomes unreadable degrades the
repository instead of failing every listing, and one unreadable model folder hides no other model."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from inferpack.errors import ModelNotFound, RepositoryError
from inferpack.repository.folder import LocalRepository
from inferpack.repository.health import Backoff, RecoveryLoop, RepositoryHealth

NOBODY = 65534
T = TypeVar("T")


def test_backoff_doubles_from_the_initial_wait_up_to_the_cap() -> None:
    backoff = Backoff(initial_s=0.5, max_s=6.0)
    assert [backoff.delay(n) for n in range(7)] == [0.5, 0.5, 1.0, 2.0, 4.0, 6.0, 6.0]
    assert Backoff(1.0, 60.0).delay(10_000) == 60.0  # no overflow after a long outage


def test_health_logs_each_change_once(caplog: pytest.LogCaptureFixture) -> None:
    health = RepositoryHealth("s3://b/p")
    with caplog.at_level(logging.WARNING, logger="inferpack.repository"):
        health.recovered()  # healthy already: nothing to say
        health.failed("InternalError")
        health.failed("SlowDown")
        assert health.view().degraded and health.view().reason == "SlowDown"
        assert health.view().failures == 2
        health.recovered()
        health.recovered()
    assert [r.getMessage().split(" ", 3)[2] for r in caplog.records] == ["degraded,", "recovered:"]
    assert health.view().failures == 0 and health.view().reason == ""


class Sleeper:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


async def test_recovery_loop_backs_off_until_the_probe_succeeds() -> None:
    health = RepositoryHealth("s3://b/p")
    answers = [False, False, False, True]
    recovered: list[bool] = []

    async def probe() -> bool:
        ok = answers.pop(0)
        health.recovered() if ok else health.failed("SlowDown")
        return ok

    sleep = Sleeper()
    loop = RecoveryLoop(
        health, probe, Backoff(1.0, 3.0), on_listed=lambda: recovered.append(True), sleep=sleep
    )
    assert await loop.step() is None  # healthy: waits, never probes
    health.failed("InternalError")  # a request's listing failed
    outcomes = [await loop.step() for _ in range(4)]
    assert outcomes == [False, False, False, True]
    assert sleep.waits == [1.0, 1.0, 2.0, 3.0, 3.0]  # after 1, 2, 3, 4 failures in a row (capped at 3)
    assert recovered == [True] and not health.degraded
    assert await loop.step() is None and answers == []


async def test_recovery_loop_refreshes_a_stale_listing_without_waiting() -> None:
    health = RepositoryHealth("s3://b/p")
    stale = [True]
    listed: list[bool] = []

    async def probe() -> bool:
        stale[0] = False
        return True

    sleep = Sleeper()
    loop = RecoveryLoop(
        health,
        probe,
        Backoff(1.0, 60.0),
        due=lambda: stale[0],
        on_listed=lambda: listed.append(True),
        sleep=sleep,
    )
    assert await loop.step() is True and sleep.waits == [] and listed == [True]
    assert await loop.step() is None and sleep.waits == [1.0]  # fresh again: no probe


async def test_a_probe_that_crashes_counts_as_a_failure_and_the_loop_goes_on() -> None:
    health = RepositoryHealth("repo")
    health.failed("unreadable")

    async def probe() -> bool:
        raise RuntimeError("boom")

    sleep = Sleeper()
    loop = RecoveryLoop(health, probe, Backoff(1.0, 60.0), sleep=sleep)
    assert await loop.step() is False
    assert await loop.step() is False
    assert sleep.waits == [1.0, 2.0] and "boom" in health.view().reason


@pytest.fixture
def readable_repo() -> Iterator[Path]:
    """Three model folders with a manifest each, in a folder any user may enter (pytest's are root-only)."""
    root = Path(tempfile.mkdtemp(prefix="inferpack-health-"))
    root.chmod(0o755)
    for model in ("a", "b", "c"):
        (root / model / "1").mkdir(parents=True)
        (root / model / "1" / "manifest.json").write_text("{}")
        for path in (root / model, root / model / "1"):
            path.chmod(0o755)
    try:
        yield root
    finally:
        for path in root.rglob("*"):
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


def as_nobody(call: Callable[[], T]) -> T:
    """Call as uid nobody where this runs as root (root reads everything); as is otherwise."""
    if os.geteuid() != 0:
        return call()
    os.seteuid(NOBODY)
    try:
        return call()
    finally:
        os.seteuid(0)


def test_an_unreadable_model_folder_is_listed_with_its_fault_and_hides_no_other(readable_repo: Path) -> None:
    repo = LocalRepository(readable_repo)
    (readable_repo / "b").chmod(0o000)
    assert as_nobody(repo.model_ids) == ["a", "b", "c"]
    assert list(repo.faults()) == ["b"]
    assert f"cannot read {readable_repo / 'b'}" in repo.faults()["b"]
    assert not repo.health.degraded  # the repository itself lists fine
    with pytest.raises(RepositoryError, match="cannot read") as caught:
        as_nobody(lambda: repo.versions("b"))
    assert caught.value.hint is not None and "chmod -R a+rX" in caught.value.hint
    assert as_nobody(lambda: repo.versions("a")) == [1]


def test_an_unreadable_repository_serves_its_last_listing_degraded_and_recovers(readable_repo: Path) -> None:
    repo = LocalRepository(readable_repo)
    assert repo.model_ids() == ["a", "b", "c"]
    readable_repo.chmod(0o000)
    assert as_nobody(repo.model_ids) == ["a", "b", "c"]  # the last listing
    state = repo.health.view()
    assert state.degraded and f"cannot read {readable_repo}" in state.reason
    assert as_nobody(repo.probe) is False
    readable_repo.chmod(0o755)
    shutil.rmtree(readable_repo / "c")
    assert as_nobody(repo.probe) is True and not repo.health.degraded
    assert repo.model_ids() == ["a", "b"]


def test_a_repository_never_listed_still_fails_clearly(tmp_path: Path) -> None:
    repo = LocalRepository(tmp_path / "missing")
    with pytest.raises(RepositoryError, match="does not exist"):
        repo.model_ids()
    assert repo.health.degraded and repo.probe() is False
    (tmp_path / "missing").mkdir()
    assert repo.probe() is True and repo.model_ids() == []
    with pytest.raises(ModelNotFound):
        repo.versions("a")
