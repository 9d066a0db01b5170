import time

import numpy as np
import pytest

from faults import FakePolicy, FaultyRobot
from policies.chunking import ChunkExecutor
from policies.control_loop import ControlLoop
from policies.safety import SafetyFilter, UnsafeAction, safety_filter_for


def test_receding_horizon_runs_the_first_n_actions_of_each_chunk():
    policy, robot = FakePolicy(), FaultyRobot()
    with ControlLoop(policy, robot, rate_hz=1000, execute=2, realtime=False, warmup=0) as loop:
        report = loop.run(max_steps=6)
    assert report.steps == 6 and policy.calls == 3
    np.testing.assert_allclose([a[0] for a in robot.actions], [0.0, 0.1] * 3)
    assert report.stop_reason == "max steps" and robot.stop_calls == 0
    assert report.chunk_switches == 2 and max(report.boundary_jumps) == pytest.approx(0.1)


def test_temporal_ensembling_averages_overlapping_predictions():
    executor = ChunkExecutor("ensemble", decay=0.0)
    executor.add_chunk(np.array([[0.0], [1.0], [2.0]]), observed_at=0)
    assert executor.action(0)[0] == 0.0
    executor.add_chunk(np.array([[3.0], [4.0], [5.0]]), observed_at=1)
    assert executor.action(1)[0] == pytest.approx((1.0 + 3.0) / 2)
    assert executor.action(5) is None


def test_a_late_chunk_drops_the_actions_whose_ticks_have_passed():
    executor = ChunkExecutor("receding", execute=4)
    chunk = np.arange(6, dtype=np.float32)[:, None]
    executor.add_chunk(chunk, observed_at=10)  # observed at tick 10, arrived at tick 12
    assert executor.action(12)[0] == 2.0 and executor.action(15)[0] == 5.0 and executor.action(16) is None
    assert not executor.needs_chunk(12) and executor.needs_chunk(14)
    assert executor.needs_chunk(12, lead=2)  # asked for early when inference takes two ticks


def test_safety_filter_clamps_limits_the_rate_per_dimension_and_refuses_garbage():
    safety = SafetyFilter(low=[-1, -1], high=[1, 1], max_delta=[0.25, 2.0])
    np.testing.assert_allclose(safety([5.0, -5.0]), [1.0, -1.0])
    np.testing.assert_allclose(safety([-1.0, 1.0]), [0.75, 1.0])  # only the first dimension is limited
    assert safety.clamped == 1 and safety.rate_limited == 1
    with pytest.raises(UnsafeAction):
        safety([np.nan, 0.0])
    with pytest.raises(UnsafeAction):
        safety([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="one per action dimension"):
        SafetyFilter([-1, -1], [1, 1], max_delta=[0.1, 0.1, 0.1])


def test_a_hold_stands_still_in_each_dimensions_own_way():
    # delta x, y; absolute gripper: holding zeroes the deltas and repeats the gripper's last command
    safety = SafetyFilter([-1, -1, -1], [1, 1, 0.5], max_delta=0.1, hold=[0.0, 0.0, None])
    assert safety.hold() is None  # nothing was ever sent: nothing to hold
    safety([0.9, -0.9, 0.9])
    held = safety.hold()
    np.testing.assert_allclose(held, [0.0, 0.0, 0.5])  # not rate-limited toward the last command, clamped
    np.testing.assert_allclose(safety.previous, held)  # the filter continues from the hold
    absolute = SafetyFilter([-3, -3], [3, 3], max_delta=0.5)  # no hold vector: absolute everywhere
    absolute([2.0, -2.0])
    np.testing.assert_allclose(absolute.hold(), [2.0, -2.0])


def test_no_action_is_sent_before_the_first_real_one_and_holds_follow_the_hold_vector():
    robot = FaultyRobot()
    policy = FakePolicy(delay=0.05)  # 2.5 ticks per decision
    with ControlLoop(policy, robot, rate_hz=50, execute=4, lead_ticks=0, warmup=0, watchdog_ticks=10) as loop:
        report = loop.run(max_steps=12)
    assert report.startup_ticks >= 2 and len(robot.actions) == report.steps - report.startup_ticks
    holds = [a for a in robot.actions if np.allclose(a[:3], 0.0) and not np.allclose(a, 0.0)]
    assert report.holds >= 1 and len(holds) == report.holds
    for held in holds:  # the gripper (absolute) repeats the last command, the deltas stop
        assert held[3] == pytest.approx(0.3)


def test_a_robot_that_can_hold_is_asked_to():
    robot = FaultyRobot(with_hold=True)
    with ControlLoop(FakePolicy(delay=0.05), robot, rate_hz=50, lead_ticks=0, warmup=0, watchdog_ticks=10) as loop:
        report = loop.run(max_steps=12)
    assert report.holds >= 1 and robot.holds == report.holds
    assert len(robot.actions) == report.steps - report.startup_ticks - report.holds


def test_pipelined_chunks_leave_no_idle_ticks_when_a_decision_takes_longer_than_a_tick():
    period = 1 / 10  # 10 Hz, a decision takes 1.5 ticks
    runs = {}
    for lead in (None, 0):  # None: measured from the policy's latency; 0: ask only when the chunk is used up
        robot, policy = FaultyRobot(), FakePolicy(delay=1.5 * period)  # chunks of 4, all executed
        with ControlLoop(policy, robot, rate_hz=10, lead_ticks=lead, watchdog_ticks=10) as loop:
            runs[lead] = loop.run(max_steps=24)
    pipelined, waiting = runs[None], runs[0]
    assert pipelined.lead_ticks == 1 and not pipelined.safe_stop  # asked one tick early, on time half-way through
    assert pipelined.holds == 0 and pipelined.startup_ticks <= 2
    assert pipelined.dropped_actions > 0  # each chunk's first action had passed when it arrived
    assert waiting.holds >= 4  # about one idle tick at every chunk boundary


def test_slow_policy_is_counted_as_missing_deadlines():
    robot = FaultyRobot()
    policy = FakePolicy(delay=0.03)
    with ControlLoop(policy, robot, rate_hz=50, execute=2, realtime=False, warmup=0) as loop:
        report = loop.run(max_steps=8)
    assert report.steps == 8 and policy.calls == 4
    assert report.missed_deadlines == 4  # every tick that waited on the 30 ms policy overran 20 ms
    summary = report.summary()
    assert summary["policy_p50_ms"] >= 30 and summary["step_p99_ms"] >= 30


def test_realtime_loop_keeps_its_rate():
    robot = FaultyRobot()
    with ControlLoop(FakePolicy(), robot, rate_hz=50, realtime=True) as loop:
        start = time.monotonic()
        report = loop.run(max_steps=10)
    elapsed = time.monotonic() - start
    assert report.steps == 10 and 0.17 < elapsed < 0.5


def test_safety_filter_for_a_policy_narrows_its_bounds_and_takes_its_hold_vector():
    meta = {"action_dim": 2, "action_low": [-0.5, -2.0], "action_high": [0.5, 2.0], "action_hold": [0.0, None]}
    narrowed = safety_filter_for(meta, low=[-1.0, -1.0], high=[1.0, 0.2], max_delta=[0.1, 0.2])
    np.testing.assert_allclose(narrowed.low, [-0.5, -1.0])
    np.testing.assert_allclose(narrowed.high, [0.5, 0.2])
    np.testing.assert_allclose(narrowed.max_delta, [0.1, 0.2])
    narrowed([0.4, 0.1])
    np.testing.assert_allclose(narrowed.hold(), [0.0, 0.1])
    unbounded = safety_filter_for({"action_dim": 3})
    assert np.all(np.isinf(unbounded.high))
    with pytest.raises(ValueError, match="one value or 3"):
        safety_filter_for({"action_dim": 3}, low=[0.0, 0.0])


def test_a_pipelined_request_carries_the_actions_the_current_chunk_still_runs():
    class PrefixPolicy(FakePolicy):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.metadata["prefix_actions"] = 2
            self.prefixes = []

        def act(self, observation):
            self.prefixes.append(observation.get("action_prefix"))
            return super().act(observation)

    robot, policy = FaultyRobot(), PrefixPolicy(delay=0.15)  # 1.5 ticks at 10 Hz: lead 1
    with ControlLoop(policy, robot, rate_hz=10, watchdog_ticks=10) as loop:
        report = loop.run(max_steps=12)
    assert report.lead_ticks == 1 and report.holds == 0
    during_run = policy.prefixes[loop.warmup + 1:]  # the first chunk of the run has nothing to continue from
    assert during_run and all(p is not None and p.shape == (1, 4) for p in during_run)
    # the chunk observed at tick t runs row 3 at tick t+3 while the next is inferred: what that request is told
    np.testing.assert_allclose(during_run[0], policy.chunk[3:4])
