"""The batcher with a controllable fake model: batching, shedding, cancellation, draining."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from inferpack.errors import DeadlineExceeded, Overloaded, PayloadTooLarge, ShuttingDown
from inferpack.runtime.batcher import InferencePool, ModelBatcher
from inferpack.runtime.crossbatch import Peers
from inferpack.runtime.tasks import TextInput
from inferpack.settings import BatchingSettings


class GatedModel:
    """predict() blocks until the test opens the gate; records every batch it ran."""

    model_id = "fake"
    version = 1

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.batches: list[list[str]] = []
        self.raw_flags: list[list[bool] | None] = []
        self.entered = threading.Semaphore(0)

    def predict(self, items: list[TextInput], raw: Any = None) -> list[dict[str, Any]]:
        self.entered.release()
        self.gate.wait(timeout=30)
        self.batches.append([i.text for i in items])
        self.raw_flags.append(raw)
        return [{"echo": i.text} for i in items]


Make = Callable[..., tuple[GatedModel, ModelBatcher]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Batchers on one single-thread pool; each is closed (gate opened first) and the pool shut down after
    the test. `make(model=None, **batching)` -> (model, batcher); no latency objective unless given."""
    made: list[tuple[GatedModel, ModelBatcher]] = []
    pool = InferencePool(threads=1)

    def build(
        model: GatedModel | None = None,
        clock: Callable[[], float] | None = None,
        drop_observer: Callable[[str], None] | None = None,
        **batching: Any,
    ) -> tuple[GatedModel, ModelBatcher]:
        model = model or GatedModel()
        # no latency objective unless a test sets one: batch sizes must not depend on how fast this machine is
        defaults = {"max_batch_size": 8, "max_batch_latency_ms": 0, "max_wait_ms": 0, "max_queue": 64}
        settings = BatchingSettings(**(defaults | batching))
        extra: dict[str, Any] = {"drop_observer": drop_observer} | ({"clock": clock} if clock else {})
        batcher = ModelBatcher(model, pool, settings, **extra)  # type: ignore[arg-type]
        made.append((model, batcher))
        return model, batcher

    yield build
    for model, batcher in made:
        model.gate.set()
        await batcher.close()
    pool.shutdown()


async def _entered(model: GatedModel) -> None:
    await asyncio.get_running_loop().run_in_executor(None, model.entered.acquire)


async def test_waiting_requests_form_one_batch_raw_or_decoded(make: Make) -> None:
    model, batcher = make(max_batch_size=8, max_queue=64)
    first = asyncio.create_task(batcher.submit(TextInput("a")))
    await _entered(model)  # the only thread is busy with "a"
    rest = [asyncio.create_task(batcher.submit(TextInput(t), raw=t == "c")) for t in "bcde"]
    while batcher.queue_depth < 4:
        await asyncio.sleep(0)
    model.gate.set()
    assert (await first)["echo"] == "a"
    assert [r["echo"] for r in await asyncio.gather(*rest)] == list("bcde")
    assert model.batches == [["a"], ["b", "c", "d", "e"]]
    assert model.raw_flags == [None, [False, True, False, False]]  # raw items share the decoded ones' batch


async def test_batches_are_capped_at_max_batch_size(make: Make) -> None:
    model, batcher = make(max_batch_size=2, max_queue=64)
    tasks = [asyncio.create_task(batcher.submit(TextInput(str(i)))) for i in range(5)]
    await _entered(model)
    model.gate.set()
    await asyncio.gather(*tasks)
    assert max(len(b) for b in model.batches) <= 2
    assert sorted(x for b in model.batches for x in b) == [str(i) for i in range(5)]


async def test_full_queue_sheds_with_overloaded(make: Make) -> None:
    model, batcher = make(max_batch_size=1, max_queue=2)
    running = asyncio.create_task(batcher.submit(TextInput("run")))
    await _entered(model)
    queued = [asyncio.create_task(batcher.submit(TextInput(f"q{i}"))) for i in range(2)]
    while batcher.queue_depth < 2:
        await asyncio.sleep(0)
    with pytest.raises(Overloaded) as info:
        await batcher.submit(TextInput("too many"))
    assert info.value.retry_after_s >= 1
    model.gate.set()
    await asyncio.gather(running, *queued)  # the admitted ones still complete


async def test_a_request_larger_than_the_whole_queue_is_refused_as_too_large(make: Make) -> None:
    # It was shed with 503 "0 requests queued (limit 2)" and Retry-After: no retry could ever succeed.
    model, batcher = make(max_batch_size=1, max_queue=2)
    with pytest.raises(PayloadTooLarge, match="request of 3 items") as info:
        await batcher.submit_many([TextInput(str(i)) for i in range(3)])
    assert info.value.hint is not None and "at most 2 items per request" in info.value.hint
    model.gate.set()
    assert len(await batcher.submit_many([TextInput("a"), TextInput("b")])) == 2  # the limit itself is fine


async def test_cancelled_requests_are_skipped(make: Make) -> None:
    model, batcher = make(max_batch_size=8, max_queue=64)
    first = asyncio.create_task(batcher.submit(TextInput("a")))
    await _entered(model)
    gone = asyncio.create_task(batcher.submit(TextInput("gone")))
    kept = asyncio.create_task(batcher.submit(TextInput("kept")))
    while batcher.queue_depth < 2:
        await asyncio.sleep(0)
    gone.cancel()
    model.gate.set()
    await first
    assert (await kept)["echo"] == "kept"
    assert ["gone"] not in model.batches and all("gone" not in b for b in model.batches)


async def test_close_drains_queued_work_then_refuses(make: Make) -> None:
    model, batcher = make(max_batch_size=1, max_queue=8)
    tasks = [asyncio.create_task(batcher.submit(TextInput(str(i)))) for i in range(3)]
    await _entered(model)
    closing = asyncio.create_task(batcher.close(drain=True))
    await asyncio.sleep(0)
    with pytest.raises(ShuttingDown):
        await batcher.submit(TextInput("late"))
    model.gate.set()
    await closing
    assert [t.result()["echo"] for t in tasks] == ["0", "1", "2"]


async def test_model_errors_reach_every_caller_and_the_batcher_survives(make: Make) -> None:
    class Failing(GatedModel):
        def predict(self, items: list[TextInput], raw: Any = None) -> list[dict[str, Any]]:
            if items[0].text == "boom":
                raise RuntimeError("kaboom")
            return super().predict(items, raw)

    model, batcher = make(Failing(), max_batch_size=4, max_queue=8)
    model.gate.set()
    with pytest.raises(RuntimeError, match="kaboom"):
        await batcher.submit(TextInput("boom"))
    assert (await batcher.submit(TextInput("fine")))["echo"] == "fine"


class FakeClock:
    """A clock the test moves by hand (the batcher's deadlines and measurements read it)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_cancelled_request_leaves_the_queue_at_once_and_is_counted(make: Make) -> None:
    dropped: list[str] = []
    model, batcher = make(drop_observer=dropped.append)
    first = asyncio.create_task(batcher.submit(TextInput("a")))
    await _entered(model)
    gone = asyncio.create_task(batcher.submit_many([TextInput("gone1"), TextInput("gone2")]))
    while batcher.queue_depth < 2:
        await asyncio.sleep(0)
    gone.cancel()  # what the transport does when the client disconnects
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert batcher.queue_depth == 0  # out of the queue before any thread is free: estimates stay true
    assert dropped == ["fake"]  # one request, however many items
    model.gate.set()
    await first
    assert (await batcher.submit(TextInput("next")))["echo"] == "next"
    assert all("gone" not in text for b in model.batches for text in b)


async def test_a_running_request_that_is_cancelled_is_not_counted_as_dropped(make: Make) -> None:
    dropped: list[str] = []
    model, batcher = make(drop_observer=dropped.append)
    running = asyncio.create_task(batcher.submit(TextInput("a")))
    await _entered(model)
    running.cancel()
    model.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert dropped == []  # it had left the queue: the work ran


async def test_a_queued_request_that_can_no_longer_make_its_deadline_is_dropped(make: Make) -> None:
    clock = FakeClock()
    model, batcher = make(clock=clock)
    first = asyncio.create_task(batcher.submit(TextInput("a")))
    await _entered(model)
    late = asyncio.create_task(batcher.submit(TextInput("late"), deadline=clock.now + 1.0))
    on_time = asyncio.create_task(batcher.submit(TextInput("on time"), deadline=clock.now + 60.0))
    while batcher.queue_depth < 2:
        await asyncio.sleep(0)
    clock.now += 2.0  # the thread stays busy past the first deadline
    model.gate.set()
    await first
    with pytest.raises(DeadlineExceeded) as info:
        await late
    assert info.value.model_id == "fake"
    assert (await on_time)["echo"] == "on time"
    assert model.batches == [["a"], ["on time"]]


@pytest.mark.parametrize("case", ["stall", "backlog", "client", "configured"])
async def test_the_derived_default_deadline_drops_a_queued_request_only_with_a_backlog(
    make: Make, case: str
) -> None:
    # The derived default deadline (the client set none) bounds a backlog. A request queued past it while
    # less than a full batch waits behind it met a stall (a contended host descheduled the server), not an
    # overload: it runs. With a full batch behind it, with a client's deadline, or with a configured
    # default (deadline_ms), it is dropped as before.
    clock = FakeClock()
    model, batcher = make(
        clock=clock, max_batch_size=2, **({"deadline_ms": 1000} if case == "configured" else {})
    )
    first = asyncio.create_task(batcher.submit(TextInput("a")))
    await _entered(model)
    default = case != "client"
    late = asyncio.create_task(
        batcher.submit_many([TextInput("late")], deadline=clock.now + 1.0, default_deadline=default)
    )
    behind = (
        [asyncio.create_task(batcher.submit(TextInput(t))) for t in ("b", "c")] if case == "backlog" else []
    )
    while batcher.queue_depth < 1 + len(behind):
        await asyncio.sleep(0)
    clock.now += 2.0  # the thread stays busy past the deadline
    model.gate.set()
    await first
    if case == "stall":
        assert (await late)[0]["echo"] == "late"
        assert model.batches == [["a"], ["late"]]
    else:
        with pytest.raises(DeadlineExceeded):
            await late
    assert [(await t)["echo"] for t in behind] == [t for t in ("b", "c") if behind]


class SlowModel(GatedModel):
    """Each batch moves the fake clock on by 0.1 s per item: the batcher measures that as compute time."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.gate.set()

    def predict(self, items: list[TextInput], raw: Any = None) -> list[dict[str, Any]]:
        self.clock.now += 0.1 * len(items)
        return super().predict(items, raw)


@pytest.mark.parametrize("behind", [False, True])
async def test_a_request_expected_to_finish_late_is_dropped_only_for_another_to_run(
    make: Make, behind: bool
) -> None:
    # work-conserving: alone in the queue it runs (an idle thread helps no one, and the batch refreshes the
    # measured batch time admission relies on); with another request behind it, it makes way
    clock = FakeClock()
    model, batcher = make(model=SlowModel(clock), clock=clock)
    await batcher.submit(TextInput("measure"))  # one item measured at 0.1 s
    model.gate.clear()
    busy = asyncio.create_task(batcher.submit(TextInput("busy")))
    await _entered(model)
    tight = asyncio.create_task(batcher.submit(TextInput("tight"), deadline=clock.now + 0.5))
    other = (
        asyncio.create_task(batcher.submit(TextInput("other"), deadline=clock.now + 60)) if behind else None
    )
    while batcher.queue_depth < (2 if behind else 1):
        await asyncio.sleep(0)
    clock.now += 0.35  # with busy's 0.1 s: 0.05 s left, less than the 0.1 s a batch takes, not yet past
    model.gate.set()
    await busy
    if other is None:
        assert (await tight)["echo"] == "tight"
        assert model.batches[-1] == ["tight"]
    else:
        with pytest.raises(DeadlineExceeded):
            await tight
        assert (await other)["echo"] == "other"
        assert all("tight" not in batch for batch in model.batches)


async def test_a_request_whose_expected_wait_misses_its_deadline_is_shed_at_arrival(make: Make) -> None:
    clock = FakeClock()
    model, batcher = make(SlowModel(clock), clock=clock)
    await batcher.submit(TextInput("measure"))  # one batch of one: 0.1 s
    with pytest.raises(Overloaded) as info:
        await batcher.submit(TextInput("hurried"), deadline=clock.now + 0.05)
    shed = info.value
    assert shed.reason == "deadline" and shed.model_id == "fake"
    assert shed.retry_after_s == pytest.approx(0.1)  # the expected service: nothing queued ahead
    with pytest.raises(Overloaded) as gone:
        await batcher.submit(TextInput("too late"), deadline=clock.now - 1)
    assert gone.value.reason == "deadline"
    assert (await batcher.submit(TextInput("patient"), deadline=clock.now + 0.5))["echo"] == "patient"
    assert model.batches == [["measure"], ["patient"]]


@pytest.mark.parametrize("spread", [True, False])
async def test_requests_queued_while_a_thread_is_idle_run_side_by_side(spread: bool) -> None:
    pool = InferencePool(threads=2)
    model = GatedModel()
    settings = BatchingSettings(max_batch_size=8, spread_over_idle_threads=spread)
    batcher = ModelBatcher(model, pool, settings)  # type: ignore[arg-type]
    try:
        both = asyncio.gather(batcher.submit(TextInput("a")), batcher.submit(TextInput("b")))
        loop = asyncio.get_running_loop()
        # spread: both are in a forward at once, two batches of one, one per idle thread
        for _ in range(2 if spread else 1):
            assert await loop.run_in_executor(None, model.entered.acquire, True, 30)
        model.gate.set()
        assert [r["echo"] for r in await both] == ["a", "b"]
        assert sorted(model.batches) == ([["a"], ["b"]] if spread else [["a", "b"]])
    finally:
        model.gate.set()
        await batcher.close()
        pool.shutdown()


class GatedSlowModel(GatedModel):
    """Blocks until the gate opens, then moves the fake clock on by 0.1 s (or `seconds_per_item`) per item
    (its measured time)."""

    def __init__(self, clock: FakeClock, seconds_per_item: float = 0.1) -> None:
        super().__init__()
        self.clock = clock
        self.seconds_per_item = seconds_per_item

    def predict(self, items: list[TextInput], raw: Any = None) -> list[dict[str, Any]]:
        result = super().predict(items, raw)
        self.clock.now += self.seconds_per_item * len(items)
        return result


async def test_with_the_thread_busy_batches_are_as_large_as_the_latency_objective_allows(make: Make) -> None:
    clock = FakeClock()
    model, batcher = make(GatedSlowModel(clock), clock=clock, max_batch_latency_ms=450)
    model.gate.set()
    await batcher.submit(TextInput("measure"))  # a batch of 1 measured at 100 ms: 4 fit in 450 ms, 5 do not
    model.gate.clear()
    first = asyncio.create_task(batcher.submit(TextInput("a")))
    await _entered(model)
    rest = [asyncio.create_task(batcher.submit(TextInput(t))) for t in "bcdef"]
    while batcher.queue_depth < 5:
        await asyncio.sleep(0)
    model.gate.set()
    await asyncio.gather(first, *rest)
    # the one left behind starts after one batch of 4 (400 ms): within the objective, so it waits for it
    assert model.batches == [["measure"], ["a"], ["b", "c", "d", "e"], ["f"]]
    assert batcher.batch_cost(4) == pytest.approx(0.4)  # measured now, no longer extrapolated


async def test_idle_threads_count_neither_held_threads_nor_those_a_dispatcher_waits_for() -> None:
    pool = InferencePool(threads=2)
    try:
        assert pool.idle_threads() == 2
        await pool.acquire()
        assert pool.idle_threads() == 1
        await pool.acquire()
        waiting = asyncio.create_task(pool.acquire())
        while pool.state().waiting == 0:
            await asyncio.sleep(0)
        assert pool.idle_threads() == 0
        pool.release()  # goes to the waiting dispatcher, not to a batch that would share its queue
        await waiting
        assert pool.idle_threads() == 0
        pool.release()
        pool.release()
        assert pool.idle_threads() == 2
    finally:
        pool.shutdown()


@pytest.mark.parametrize("settle_ms", [0.0, 60_000.0])
async def test_with_the_other_thread_busy_a_batch_settles_while_requests_keep_arriving(
    settle_ms: float,
) -> None:
    """The settle rule: a thread freed while the other one runs a batch waits for the requests that keep
    arriving (up to the largest size allowed) instead of taking the first alone; off, it takes the first."""
    clock = FakeClock()
    pool = InferencePool(threads=2)
    model = GatedSlowModel(clock, seconds_per_item=60.0)  # a batch of 1 measured at 60 s: the wait's cap
    settings = BatchingSettings(
        max_batch_size=4, max_batch_latency_ms=0, spread_over_idle_threads=False, settle_ms=settle_ms
    )
    batcher = ModelBatcher(model, pool, settings, clock=clock)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    try:
        model.gate.set()
        await batcher.submit(TextInput("measure"))
        model.gate.clear()
        running = asyncio.gather(batcher.submit(TextInput("a")), batcher.submit(TextInput("b")))
        assert await loop.run_in_executor(None, model.entered.acquire, True, 30)  # [a, b] holds one thread
        later = [asyncio.create_task(batcher.submit(TextInput("c")))]
        while pool.idle_threads() > 0:  # c's batch holds the other thread
            await asyncio.sleep(0)
        if not settle_ms:
            assert await loop.run_in_executor(None, model.entered.acquire, True, 30)  # [c] runs alone
        for text in "def":  # the next requests come in one by one
            await asyncio.sleep(0.01)
            later.append(asyncio.create_task(batcher.submit(TextInput(text))))
        model.gate.set()
        await asyncio.gather(running, *later)
        expected = [["c", "d", "e", "f"]] if settle_ms else [["c"], ["d", "e", "f"]]
        assert sorted(model.batches[1:]) == sorted([["a", "b"], *expected])  # the threads finish in any order
    finally:
        model.gate.set()
        await batcher.close()


class CountingPeers(Peers):
    """Peers that count how often a batch looked at the other models' queues."""

    def __init__(self) -> None:
        super().__init__(key=lambda m: ("base",))
        self.looked = 0

    def others(self, batcher: Any) -> list[Any]:
        self.looked += 1
        return super().others(batcher)


async def test_a_batch_of_one_from_its_own_queue_does_not_look_at_the_peers() -> None:
    pool = InferencePool(threads=2)
    peers = CountingPeers()
    models = [GatedModel(), GatedModel()]
    batchers = [ModelBatcher(m, pool, BatchingSettings(), peers=peers) for m in models]  # type: ignore[arg-type]
    peers.looked = 0  # joining looks once
    try:
        both = asyncio.gather(*(b.submit(TextInput(t)) for b, t in zip(batchers, "ab", strict=True)))
        loop = asyncio.get_running_loop()
        for model in models:  # two idle threads: two batches of one, side by side
            assert await loop.run_in_executor(None, model.entered.acquire, True, 30)
            model.gate.set()
        assert [r["echo"] for r in await both] == ["a", "b"]
        assert [m.batches for m in models] == [[["a"]], [["b"]]] and peers.looked == 0
    finally:
        for model in models:
            model.gate.set()
        for batcher in batchers:
            await batcher.close()


async def test_an_idle_pool_probes_when_its_batch_times_say_no_request_can_make_it(make: Make) -> None:
    # one slow measurement (0.1 s) would shed every 60 ms request for good: nothing runs to correct it
    clock = FakeClock()
    model, batcher = make(SlowModel(clock), clock=clock)
    await batcher.submit(TextInput("measure"))  # 0.1 s
    with pytest.raises(Overloaded):  # a batch just ended: the measurement is fresh, the shed stands
        await batcher.submit(TextInput("fresh"), deadline=clock.now + 0.06)
    clock.now += 0.2  # idle for two expected batch times
    with pytest.raises(Overloaded):  # under half the expected time left: not worth a probe
        await batcher.submit(TextInput("hopeless"), deadline=clock.now + 0.04)
    assert (await batcher.submit(TextInput("probe"), deadline=clock.now + 0.06))["echo"] == "probe"
    with pytest.raises(Overloaded):  # the probe's batch just ran: no second probe at once
        await batcher.submit(TextInput("again"), deadline=clock.now + 0.06)
    assert model.batches == [["measure"], ["probe"]]


async def test_the_pool_knows_when_each_running_batch_should_end() -> None:
    pool = InferencePool(threads=2)
    try:
        assert pool.state(10.0).busy_left_s == () and pool.state(10.0).threads == 2
        first = pool.begin_batch(10.0, 0.1)
        pool.begin_batch(10.05, 0.1)
        assert pool.state(10.08).busy_left_s == pytest.approx((0.02, 0.07))
        assert pool.last_activity == 10.05
        pool.end_batch(first, 10.09)
        assert pool.state(10.09).busy_left_s == pytest.approx((0.06,))
        assert pool.last_activity == 10.09
        assert pool.state().busy_left_s == ()  # without a time: the mean-interval view only
    finally:
        pool.shutdown()


class UnevenModel(SlowModel):
    """Batches alternately fast and slow (0.1 s, then 0.3 s per item): a moving average of its batch time
    is right on average and wrong for every batch."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.calls = 0

    def predict(self, items: list[TextInput], raw: Any = None) -> list[dict[str, Any]]:
        self.calls += 1
        self.clock.now += (0.1 if self.calls % 2 else 0.3) * len(items)
        return GatedModel.predict(self, items, raw)


async def test_admission_adds_how_late_admitted_requests_have_been(make: Make) -> None:
    """An estimate that is right on average admits requests that just fit and then half of them finish
    late; once admitted requests have run past their estimates, the shed applies the recent lateness (a
    high quantile of got / estimated) to the estimate, and says so."""
    clock = FakeClock()
    model, batcher = make(model=UnevenModel(clock), clock=clock)
    await batcher.submit(TextInput("first"))  # nothing measured yet: admitted with no wait expected
    lateness = batcher.pool.lateness
    assert lateness.factor == 1.0
    for i in range(40):
        await batcher.submit(TextInput(f"r{i}"))
    assert 1.2 < lateness.factor < 3.0  # a slow batch takes 0.3 s against a moving average of ~0.2
    service = batcher.estimate().service_s
    assert service < 0.25 < service * lateness.factor  # the estimate alone would admit 0.25 s left
    with pytest.raises(Overloaded) as info:
        await batcher.submit(TextInput("tight"), deadline=clock.now + 0.25)
    assert info.value.reason == "deadline" and "recent lateness" in str(info.value)
    assert info.value.lateness == lateness.factor  # reported with the shed (a router applies it too)
    ran = len(model.batches)
    assert (await batcher.submit(TextInput("roomy"), deadline=clock.now + 0.5))["echo"] == "roomy"
    assert len(model.batches) == ran + 1 and all("tight" not in b for b in model.batches)
    # the server's own derived default deadline (the client set none and waits on) is not made stricter
    assert batcher.default_is_soft
    soft = await batcher.submit_many([TextInput("soft")], deadline=clock.now + 0.25, default_deadline=True)
    assert soft[0]["echo"] == "soft"
