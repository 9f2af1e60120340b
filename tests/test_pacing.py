"""The GCRA pacer under trio's virtual clock."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import trio
import trio.testing

from ibkr_recover._pacing import Pacer, Spacer

EPS = 1e-9


async def _acquire_all(pacer: Pacer, n: int) -> list[float]:
    times: list[float] = []

    async def one() -> None:
        await pacer.acquire()
        times.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return sorted(times)


async def test_hundred_acquisitions_at_ten_per_second_take_exactly_9_9_s(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer.per_second(10)
    t0 = trio.current_time()
    times = await _acquire_all(pacer, 100)
    assert times[0] == t0
    assert times[-1] - t0 == pytest.approx(9.9, abs=EPS)
    assert trio.current_time() - t0 == pytest.approx(9.9, abs=EPS)


async def test_slots_land_on_exact_multiples_of_the_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer.per_second(10)
    t0 = trio.current_time()
    times = await _acquire_all(pacer, 31)
    for k, t in enumerate(times):
        assert t - t0 == pytest.approx(k * 0.1, abs=EPS)


async def test_no_one_second_window_holds_more_than_rate_acquisitions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rate = 10
    pacer = Pacer.per_second(rate)
    times = await _acquire_all(pacer, 95)
    for i in range(len(times) - rate):
        assert times[i + rate] - times[i] >= 1.0 - EPS


async def test_burst_lets_the_first_acquisitions_through_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer.per_second(10, burst=5)
    t0 = trio.current_time()
    times = await _acquire_all(pacer, 100)
    assert [t - t0 for t in times[:5]] == [0.0] * 5
    assert times[-1] - t0 == pytest.approx(9.5, abs=EPS)


async def test_interval_gaps_are_at_least_the_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(5.0)
    times = await _acquire_all(pacer, 6)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 5.0 - EPS for gap in gaps)
    assert gaps == pytest.approx([5.0] * 5)


async def test_interval_counts_from_the_last_acquisition_after_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(5.0)
    await pacer.acquire()
    t1 = trio.current_time()
    await trio.sleep(7)
    await pacer.acquire()
    assert trio.current_time() - t1 == pytest.approx(7.0)
    await pacer.acquire()
    assert trio.current_time() - t1 == pytest.approx(12.0)


async def test_cancelled_waiter_consumes_no_slot(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(1.0)
    t0 = trio.current_time()
    await pacer.acquire()
    with trio.move_on_after(0.5) as scope:
        await pacer.acquire()
    assert scope.cancelled_caught
    await pacer.acquire()
    assert trio.current_time() - t0 == pytest.approx(1.0)


async def test_cancelled_queued_waiter_lets_the_next_one_move_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(1.0)
    t0 = trio.current_time()
    await pacer.acquire()
    done: dict[str, float] = {}

    async def waiter(name: str) -> None:
        await pacer.acquire()
        done[name] = trio.current_time() - t0

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "first")
        await trio.testing.wait_all_tasks_blocked()
        cancelled = trio.CancelScope()

        async def cancellable() -> None:
            with cancelled:
                await waiter("cancelled")

        nursery.start_soon(cancellable)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "third")
        await trio.testing.wait_all_tasks_blocked()
        cancelled.cancel()
    assert "cancelled" not in done
    assert done["first"] == pytest.approx(1.0)
    assert done["third"] == pytest.approx(2.0)


async def test_rate_zero_is_unlimited_and_still_a_checkpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer.per_second(0)
    t0 = trio.current_time()
    times = await _acquire_all(pacer, 1000)
    assert times[-1] == t0
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await pacer.acquire()


async def test_pacer_may_be_built_outside_a_trio_run() -> None:
    pacer = await trio.to_thread.run_sync(Pacer, 0.5)
    await pacer.acquire()
    assert pacer.interval == 0.5


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan])
def test_invalid_interval_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="interval"):
        Pacer(bad)
    with pytest.raises(ValueError, match="rate"):
        Pacer.per_second(bad)


def test_invalid_burst_is_refused() -> None:
    with pytest.raises(ValueError, match="burst"):
        Pacer(1.0, burst=0)


async def test_an_urgent_caller_gets_the_slot_after_the_one_being_waited_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer.per_second(10)
    t0 = trio.current_time()
    normal: list[float] = []
    urgent: list[float] = []

    async def one(times: list[float], *, hurry: bool) -> None:
        await pacer.acquire(urgent=hurry)
        times.append(trio.current_time() - t0)

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(functools.partial(one, normal, hurry=False))
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(1.05)  # ten slots gone, the eleventh being waited for (at 1.1 s)
        nursery.start_soon(functools.partial(one, urgent, hurry=True))
    assert urgent == [pytest.approx(1.2, abs=EPS)]
    every = sorted(normal + urgent)
    assert every == pytest.approx([k * 0.1 for k in range(51)], abs=EPS)


async def test_urgent_and_normal_callers_together_never_exceed_the_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer.per_second(10)
    times: list[float] = []

    async def one(delay: float, hurry: bool) -> None:
        await trio.sleep(delay)
        await pacer.acquire(urgent=hurry)
        times.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for k in range(200):
            nursery.start_soon(one, (k * 37 % 101) / 50, k % 7 == 0)
    times.sort()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.1 - EPS


async def test_cancelled_sleeper_followed_by_an_urgent_reservation_leaves_a_gap_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(1.0)
    t0 = trio.current_time()
    await pacer.acquire()
    times: list[float] = []

    async def hurry() -> None:
        await pacer.acquire(urgent=True)
        times.append(trio.current_time() - t0)

    async with trio.open_nursery() as nursery:
        with trio.move_on_after(0.5):
            nursery.start_soon(hurry)
            await pacer.acquire()  # sleeps for slot 1 s; the urgent caller reserves 2 s
    await pacer.acquire()
    times.append(trio.current_time() - t0)
    assert times == [pytest.approx(2.0), pytest.approx(3.0)]


async def test_a_spare_caller_takes_a_free_slot_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer.per_second(10)
    t0 = trio.current_time()
    await pacer.acquire_spare()
    await pacer.acquire()
    assert trio.current_time() - t0 == pytest.approx(0.1, abs=EPS)


async def test_a_spare_caller_waits_while_other_callers_keep_the_schedule_booked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer.per_second(10)
    t0 = trio.current_time()
    normal: list[float] = []
    spare: list[float] = []

    async def one() -> None:
        await pacer.acquire()
        normal.append(trio.current_time() - t0)

    async def spare_one() -> None:
        await pacer.acquire_spare()
        spare.append(trio.current_time() - t0)

    await pacer.acquire()  # slot 0 taken: the spare callers wait for slot 0.1
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(spare_one)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(30):
            nursery.start_soon(one)
    # Though they came later, the other callers go first; then the spare callers, at the rate.
    assert normal == pytest.approx([k * 0.1 for k in range(1, 31)], abs=EPS)
    assert spare == pytest.approx([3.1, 3.2, 3.3], abs=EPS)


async def test_spare_and_other_callers_together_never_exceed_the_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer.per_second(10)
    times: list[float] = []

    async def one(delay: float, kind: int) -> None:
        await trio.sleep(delay)
        if kind == 0:
            await pacer.acquire_spare()
        else:
            await pacer.acquire(urgent=kind == 1)
        times.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for k in range(200):
            nursery.start_soon(one, (k * 37 % 101) / 50, k % 5)
    times.sort()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.1 - EPS


async def test_a_cancelled_spare_caller_takes_no_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(1.0)
    t0 = trio.current_time()
    await pacer.acquire()
    with trio.move_on_after(0.5):
        await pacer.acquire_spare()
    await pacer.acquire()
    assert trio.current_time() - t0 == pytest.approx(1.0, abs=EPS)


async def _turns(spacer: Spacer, n: int, *then: Pacer, hold: float = 0.0) -> list[float]:
    times: list[float] = []

    async def one() -> None:
        async with spacer.turn(*then):
            times.append(trio.current_time())
            await trio.sleep(hold)

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return times


async def test_spacer_gaps_are_at_least_the_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times = await _turns(Spacer(5.0), 6)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([5.0] * 5)


async def test_spacer_counts_from_the_moment_after_the_global_pacer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    spacer = Spacer(1.0)
    busy = Pacer(0.25)
    times: list[float] = []

    async def other_traffic() -> None:
        for _ in range(12):
            await busy.acquire()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_traffic)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(3):
            async with spacer.turn(busy):
                times.append(trio.current_time())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 1.0 - EPS for gap in gaps), gaps


async def test_spacer_lets_one_holder_in_at_a_time(autojump_clock: trio.testing.MockClock) -> None:
    spacer = Spacer(0.0)
    inside = 0
    most = 0

    async def one() -> None:
        nonlocal inside, most
        async with spacer.turn():
            inside += 1
            most = max(most, inside)
            await trio.sleep(1)
            inside -= 1

    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    assert most == 1
    assert trio.current_time() - t0 == pytest.approx(5.0)


async def test_spacer_holder_cancelled_while_waiting_takes_no_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    spacer = Spacer(5.0)
    t0 = trio.current_time()
    async with spacer.turn():
        pass
    with trio.move_on_after(2) as scope:
        async with spacer.turn():
            pytest.fail("should not get a turn")
    assert scope.cancelled_caught
    async with spacer.turn():
        assert trio.current_time() - t0 == pytest.approx(5.0)


async def test_spacer_holder_cancelled_waiting_for_the_pacer_takes_no_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    spacer = Spacer(1.0)
    slow = Pacer(10.0)
    await slow.acquire()
    t0 = trio.current_time()
    with trio.move_on_after(3):
        async with spacer.turn(slow):
            pytest.fail("should not get a turn")
    async with spacer.turn():
        assert trio.current_time() - t0 == pytest.approx(3.0)


def test_spacer_refuses_an_invalid_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        Spacer(-1.0)
