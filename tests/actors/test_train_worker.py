"""`actors.train_worker.StepSync` on rank 0 against a simulated clock: how soon a stop request and a preemption
notice are seen, and how often metrics reach Ray Train (the collectives are single-rank stand-ins)."""

from __future__ import annotations

import pytest
import ray.train
import ray.train.collective

from actors import train_worker
from recap_ray.train import loop


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def rank0(monkeypatch):
    """A StepSync for rank 0 of one, on a clock the test moves; returns (sync, clock, reports, notices)."""
    clock, reports, notices = Clock(), [], {"stop_at": None, "preempt_at": None}
    monkeypatch.setattr(train_worker, "time", clock)
    monkeypatch.setattr(ray.train.collective, "broadcast_from_rank_zero", lambda value: value)
    monkeypatch.setattr(ray.train, "report", lambda metrics: reports.append((clock.now, metrics)))
    monkeypatch.setattr(ray.train, "get_preemption_info",
                        lambda: "draining" if notices["preempt_at"] is not None and clock.now >= notices["preempt_at"] else None)  # fmt: skip
    monkeypatch.setattr(train_worker.run_record, "stop_requested",
                        lambda run_dir, session: notices["stop_at"] is not None and clock.now >= notices["stop_at"])  # fmt: skip
    return train_worker.StepSync("run", "session", rank=0), clock, reports, notices


def _run(sync, clock, step_s, steps, *, compile_s=30.0, dispatch_steps=2):
    """Steps as the loop takes them: the first after compilation, the next `dispatch_steps` at dispatch speed
    (before `loop.InFlight` holds the loop to the device), then `step_s` each; metrics logged every step.
    Returns (step, time) of the first answer that is not None, else None."""
    for step in range(1, steps + 1):
        clock.now += compile_s if step == 1 else 0.001 if step <= 1 + dispatch_steps else step_s
        sync.report({"step": step})
        if (answer := sync()) is not None:
            return answer, step, clock.now
    return None


def test_next_look_is_about_the_poll_interval_and_grows_at_most_twofold():
    assert train_worker.next_look(10, 1.0, previous=20) == round(train_worker.STOP_POLL_S * 10)  # 2 s at 10 steps/s
    assert train_worker.next_look(1, 0.001, previous=1) == 2  # one step measured at dispatch speed
    assert train_worker.next_look(1000, 0.1, previous=1000) == 1000  # capped
    assert train_worker.next_look(1, 60.0, previous=8) == 1  # slower than the interval: every step


@pytest.mark.parametrize("step_s", [0.05, 1.2])
def test_a_stop_request_is_seen_within_a_few_poll_intervals(rank0, step_s):
    sync, clock, _, notices = rank0
    notices["stop_at"] = 100.0
    answer, step, seen = _run(sync, clock, step_s, steps=100_000)
    assert answer == loop.STOPPED
    assert seen - 100.0 <= 2 * train_worker.STOP_POLL_S + step_s, (step, seen)


def test_a_preemption_notice_is_seen_within_a_few_poll_intervals(rank0):
    sync, clock, _, notices = rank0
    notices["preempt_at"] = 50.0
    answer, step, seen = _run(sync, clock, 0.3, steps=100_000)
    assert answer == loop.PREEMPTED and seen - 50.0 <= 2 * train_worker.STOP_POLL_S + 0.3, (step, seen)


def test_metrics_reach_ray_train_at_most_every_report_interval_and_the_last_at_the_end(rank0):
    sync, clock, reports, _ = rank0
    assert _run(sync, clock, 0.05, steps=2000) is None  # 30 s compile + ~100 s of steps, a log each step
    times = [t for t, _ in reports]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(reports) >= 9 and min(gaps) >= train_worker.REPORT_INTERVAL_S, times
    assert max(gaps) <= train_worker.REPORT_INTERVAL_S + 2 * train_worker.STOP_POLL_S, times
    sync.flush()
    assert reports[-1][1] == {"step": 2000}
    sync.flush()  # nothing new: no report
    assert reports[-1][1] == {"step": 2000} and len([r for r in reports if r[1] == {"step": 2000}]) == 1
