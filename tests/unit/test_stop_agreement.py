"""The stop agreement on a real TCPStore: ranks at different speeds stop after the same step."""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta

import pytest
from torch.distributed import TCPStore

from spotsafe._dist import AgreementFailed, StopAgreement


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def store():
    port = free_port()
    master = TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=30))
    yield port
    del master


def ranks(port: int, world: int, **kw) -> list[StopAgreement]:
    return [StopAgreement(rank=r, world_size=world, host="127.0.0.1", port=port, prefix="t/", **kw).start()
            for r in range(world)]


def run_all(ags: list[StopAgreement], loop) -> None:
    """``loop(ag)`` for every rank at once, each in a thread of its own (bounded), then close them."""
    threads = [threading.Thread(target=loop, args=(ag,)) for ag in ags]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for ag in ags:
        ag.close()


def run_loop(ag: StopAgreement, step_s: float, notice_at: int | None, out: dict, limit: int = 400) -> None:
    """A training loop of one rank: ``step_s`` a step; a notice at ``notice_at``; where it stopped."""
    try:
        for step in range(1, limit + 1):
            time.sleep(step_s)
            if step == notice_at:
                ag.request("signal", "SIGTERM received", None)
            if ag.should_stop(step):
                out[ag.rank] = step
                return
        out[ag.rank] = None
    except AgreementFailed as e:
        out[ag.rank] = e


@pytest.mark.parametrize("noticed", [0, 1, 2])
def test_ranks_at_different_speeds_stop_after_the_same_step(store, noticed):
    ags = ranks(store, 3, poll=0.01)
    out: dict = {}
    speeds = [0.002, 0.005, 0.011]  # independent loops, far apart after a few steps
    run_all(ags, lambda ag: run_loop(ag, speeds[ag.rank], 20 if ag.rank == noticed else None, out))
    stops = [out[r] for r in range(3)]
    assert len(set(stops)) == 1 and isinstance(stops[0], int), stops
    assert stops[0] == ags[0].stop_at >= 20  # never before the step the notice came in
    assert all(ag.notice == {"rank": noticed, "source": "signal", "reason": "SIGTERM received", "deadline": None}
               for ag in ags)


def test_two_ranks_in_lockstep_never_deadlock(store):
    """Ranks that meet every step (as DDP's all-reduce makes them) stop together, one waiting for the other."""
    ags = ranks(store, 2, poll=0.01)
    barrier = threading.Barrier(2, timeout=20)  # stands for the per-step collective
    out: dict = {}

    def loop(ag: StopAgreement) -> None:
        for step in range(1, 400):
            barrier.wait()
            if step == 7 and ag.rank == 1:
                ag.request("aws", "spot interruption", 1e10)
            if ag.should_stop(step):
                out[ag.rank] = step
                return

    run_all(ags, loop)
    assert out[0] == out[1] == ags[0].stop_at in (7, 8, 9)


def test_a_rank_that_never_answers_fails_the_agreement_in_bounded_time(store):
    alive = StopAgreement(rank=0, world_size=2, host="127.0.0.1", port=store, prefix="t/", poll=0.01,
                          timeout=1.0).start()  # rank 1 of 2 never starts: dead
    t0 = time.monotonic()
    alive.request("signal", "SIGTERM received", None)
    with pytest.raises(AgreementFailed, match=r"rank\(s\) 1 did not answer within 1s"):
        alive.should_stop(3)
    assert time.monotonic() - t0 < 10
    alive.close()


def test_while_no_stop_is_asked_the_loop_never_waits(store):
    """(Its cost, well under 1 µs a step, is measured by bench/bench_dist.py.)"""
    ag = StopAgreement(rank=0, world_size=2, host="127.0.0.1", port=store, prefix="t/", poll=0.01).start()
    assert not any(ag.should_stop(step) for step in range(1, 10_001))
    assert ag.finished == 10_000 and ag.stop_at is None and not ag.stopping
    ag.close()


def test_without_a_store_each_rank_stops_on_its_own_notice(caplog):
    ag = StopAgreement(rank=1, world_size=2, host="127.0.0.1", port=free_port(), prefix="t/", poll=0.01,
                       timeout=1.0).start()  # nothing listens there
    ag._thread.join(timeout=60)
    assert ag.unavailable and "could not be reached" in caplog.text
    assert not ag.should_stop(4)
    ag.request("signal", "SIGTERM received", None)
    assert ag.should_stop(5) and ag.stop_at is None
    ag.close()


def test_outside_a_multi_rank_job_there_is_no_agreement(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert StopAgreement.from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    assert StopAgreement.from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "3")
    ag = StopAgreement.from_env()
    assert ag is not None and (ag.rank, ag.world_size, ag.port) == (1, 2, 1) and ag.prefix.endswith("/3/")


def save_loop(ag: StopAgreement, step_s: float, ask_at: set[int], out: dict, limit: int = 120,
              barrier: threading.Barrier | None = None) -> None:
    """A loop of one rank that asks for save points at ``ask_at`` and records the steps it saved."""
    saved: list[int] = []
    try:
        for step in range(1, limit + 1):
            time.sleep(step_s)
            if barrier is not None:
                barrier.wait()
            if ag.should_stop(step):
                break
            if step in ask_at:
                ag.request_save()
            if ag.should_save(step):
                saved.append(step)
        out[ag.rank] = saved
    except (AgreementFailed, threading.BrokenBarrierError) as e:
        out[ag.rank] = e


@pytest.mark.parametrize("asker", [0, 2])
def test_save_points_asked_by_one_rank_are_taken_at_the_same_steps_on_every_rank(store, asker):
    """A time-based policy fires on one rank at its own step; every rank saves the same steps, once each."""
    ags = ranks(store, 3, poll=0.01)
    out: dict = {}
    speeds = [0.002, 0.005, 0.009]
    asks = {10, 11}  # asked again before the first is taken: one save
    run_all(ags, lambda ag: save_loop(ag, speeds[ag.rank], asks if ag.rank == asker else set(), out))
    saved = [out[r] for r in range(3)]
    assert all(isinstance(s, list) for s in saved), saved
    assert saved[0] == saved[1] == saved[2] and len(saved[0]) == 1, saved
    assert saved[0][0] == ags[0].save_at >= 10  # never before it was asked, on the agreed step


def test_save_points_in_lockstep_never_deadlock(store):
    """Ranks meeting every step: the rank that waits for the save step releases the other in time."""
    ags = ranks(store, 2, poll=0.01)
    barrier = threading.Barrier(2, timeout=20)
    out: dict = {}
    run_all(ags, lambda ag: save_loop(ag, 0.001, {5, 30, 31} if ag.rank == 1 else set(), out, limit=60,
                                      barrier=barrier))
    assert isinstance(out[0], list) and out[0] == out[1], out
    assert len(out[0]) == 2 and 5 <= out[0][0] < 30 <= out[0][1], out  # two rounds: 30 and 31 ask once
