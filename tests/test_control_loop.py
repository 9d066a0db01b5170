import time

import numpy as np
import pytest

from policies.chunking import ChunkExecutor
from policies.control_loop import ControlLoop
from policies.safety import SafetyFilter, UnsafeAction


class FakeRobot:
    def __init__(self, stale_after: int | None = None, clock=time.monotonic):
        self.actions, self.stopped, self.clock = [], False, clock
        self.stale_after = stale_after
        self.observations = 0
        self.stamp = clock()

    def get_observation(self):
        self.observations += 1
        if self.stale_after is None or self.observations <= self.stale_after:
            self.stamp = self.clock()  # a stalled robot keeps sending the old stamp
        return {"image": np.zeros((8, 8, 3), np.uint8), "state": np.zeros(4, np.float32), "timestamp": self.stamp}

    def apply_action(self, action):
        self.actions.append(np.array(action))

    def stop(self):
        self.stopped = True


class FakePolicy:
    metadata = {"action_dim": 4, "chunk_size": 4}

    def __init__(self, chunk=None, delay=0.0, fail_after=None):
        self.chunk = np.tile(np.arange(4, dtype=np.float32)[:, None] / 10, (1, 4)) if chunk is None else chunk
        self.delay, self.calls, self.fail_after = delay, 0, fail_after

    def reset(self):
        pass

    def act(self, observation):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("model exploded")
        if self.delay:
            time.sleep(self.delay)
        return self.chunk


def test_receding_horizon_runs_the_first_n_actions_of_each_chunk():
    policy, robot = FakePolicy(), FakeRobot()
    with ControlLoop(policy, robot, rate_hz=1000, execute=2, realtime=False) as loop:
        report = loop.run(max_steps=6)
    assert report.steps == 6 and policy.calls == 3
    np.testing.assert_allclose([a[0] for a in robot.actions], [0.0, 0.1] * 3)
    assert report.stop_reason == "max steps" and not robot.stopped


def test_temporal_ensembling_averages_overlapping_predictions():
    executor = ChunkExecutor("ensemble", decay=0.0)
    executor.add_chunk(np.array([[0.0], [1.0], [2.0]]))
    assert executor.next_action()[0] == 0.0
    executor.add_chunk(np.array([[3.0], [4.0], [5.0]]))
    assert executor.next_action()[0] == pytest.approx((1.0 + 3.0) / 2)


def test_safety_filter_clamps_and_limits_the_rate():
    safety = SafetyFilter(low=[-1, -1], high=[1, 1], max_delta=0.25)
    np.testing.assert_allclose(safety([5.0, -5.0]), [1.0, -1.0])
    np.testing.assert_allclose(safety([-1.0, 1.0]), [0.75, -0.75])  # at most 0.25 per step
    assert safety.clamped == 1 and safety.rate_limited == 1
    with pytest.raises(UnsafeAction):
        safety([np.nan, 0.0])
    with pytest.raises(UnsafeAction):
        safety([0.0, 0.0, 0.0])


def test_nan_from_the_policy_stops_the_robot():
    chunk = np.full((4, 4), np.nan, np.float32)
    robot = FakeRobot()
    with ControlLoop(FakePolicy(chunk), robot, rate_hz=1000, realtime=False,
                     safety=SafetyFilter([-1] * 4, [1] * 4)) as loop:
        report = loop.run(max_steps=10)
    assert robot.stopped and report.safe_stop and "non-finite" in report.stop_reason
    assert robot.actions == []  # nothing unsafe was sent


def test_policy_exception_stops_the_robot():
    robot = FakeRobot()
    with ControlLoop(FakePolicy(fail_after=1), robot, rate_hz=1000, realtime=False) as loop:
        report = loop.run(max_steps=20)
    assert robot.stopped and "model exploded" in report.stop_reason and report.steps == 4


def test_watchdog_fires_on_a_stalled_robot():
    robot = FakeRobot(stale_after=3)
    with ControlLoop(FakePolicy(), robot, rate_hz=100, watchdog_ticks=3, realtime=True) as loop:
        report = loop.run(max_steps=100)
    assert robot.stopped and "stale observation" in report.stop_reason
    assert report.holds == 4 and report.steps < 20
    assert all(np.all(a[:3] == 0) for a in robot.actions[-3:])  # held still before stopping


def test_watchdog_fires_on_a_late_policy():
    robot = FakeRobot()
    with ControlLoop(FakePolicy(delay=0.5), robot, rate_hz=100, watchdog_ticks=5, realtime=True) as loop:
        report = loop.run(max_steps=100)
    assert robot.stopped and "policy late" in report.stop_reason and report.holds == 6


def test_slow_policy_is_counted_as_missing_deadlines():
    robot = FakeRobot()
    policy = FakePolicy(delay=0.03)
    with ControlLoop(policy, robot, rate_hz=50, execute=2, realtime=False) as loop:
        report = loop.run(max_steps=8)
    assert report.steps == 8 and policy.calls == 4
    assert report.missed_deadlines == 4  # every tick that waited on the 30 ms policy overran 20 ms
    summary = report.summary()
    assert summary["policy_p50_ms"] >= 30 and summary["step_p99_ms"] >= 30


def test_realtime_loop_keeps_its_rate():
    robot = FakeRobot()
    start = time.monotonic()
    with ControlLoop(FakePolicy(), robot, rate_hz=50, realtime=True) as loop:
        report = loop.run(max_steps=10)
    elapsed = time.monotonic() - start
    assert report.steps == 10 and 0.17 < elapsed < 0.5


def test_safety_filter_for_a_policy_narrows_its_bounds_by_the_robots():
    from policies.safety import safety_filter_for

    meta = {"action_dim": 2, "action_low": [-0.5, -2.0], "action_high": [0.5, 2.0]}
    narrowed = safety_filter_for(meta, low=[-1.0, -1.0], high=[1.0, 0.2])
    np.testing.assert_allclose(narrowed.low, [-0.5, -1.0])
    np.testing.assert_allclose(narrowed.high, [0.5, 0.2])
    unbounded = safety_filter_for({"action_dim": 3})
    np.testing.assert_allclose(unbounded.low, [-1, -1, -1])
