"""Fault injection: every way the robot or the policy can fail ends with robot.stop(), in time, with the
reason named. The scenarios are in tests/faults.py (benchmarks/fault_stops.py prints their table)."""

import asyncio
import threading
import time

import numpy as np
import pytest

from faults import BUDGET_S, RATE_HZ, SCENARIOS, WATCHDOG_TICKS, FakePolicy, FaultyRobot, run_scenario
from policies.control_loop import ControlLoop

SLACK_S = 0.15  # thread scheduling on a loaded 2-core machine


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_fault_stops_the_robot_within_the_tick_budget(scenario):
    report, robot, _, elapsed = run_scenario(scenario)
    assert robot.stop_calls >= 1, "the robot was not stopped"
    assert elapsed is not None and elapsed <= BUDGET_S + SLACK_S, f"stopped {elapsed} s after the fault"
    if report is not None:  # a re-raised KeyboardInterrupt returns no report
        assert report.safe_stop and scenario.reason in report.stop_reason, report.stop_reason
    if scenario.policy.get("nan"):
        assert robot.actions == []  # nothing was sent
    assert all(np.all(np.isfinite(a)) for a in robot.actions)


def test_a_hung_driver_call_is_stopped_while_it_is_still_blocked():
    robot = FaultyRobot(fault="act_hangs", at=3)
    loop = ControlLoop(FakePolicy(), robot, rate_hz=RATE_HZ, watchdog_ticks=WATCHDOG_TICKS)
    result = {}
    thread = threading.Thread(target=lambda: result.update(report=loop.run(max_steps=100)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 2
    while robot.stopped_at is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert robot.stopped_at is not None and thread.is_alive()  # stop() came while apply_action() was blocked
    sent = len(robot.actions)
    robot.release.set()  # the driver call returns at last
    thread.join(2)
    report = result["report"]
    assert report.safe_stop and "robot.apply_action()" in report.stop_reason
    assert len(robot.actions) == sent + 1  # the blocked call completes; nothing is sent after it
    assert robot.stop_calls >= 2  # and the robot is stopped again after it


def test_a_slow_first_inference_is_absorbed_by_the_warm_up():
    robot, policy = FaultyRobot(), FakePolicy(first_delay=0.5)
    with ControlLoop(policy, robot, rate_hz=RATE_HZ, watchdog_ticks=WATCHDOG_TICKS) as loop:
        report = loop.run(max_steps=20)
    assert not report.safe_stop and report.steps == 20 and robot.stop_calls == 0
    assert report.missed_deadlines == 0 and report.warmup_ms[0] >= 500
    assert report.startup_ticks == 0 and report.holds == 0


def test_server_dropping_mid_episode_stops_the_robot():
    from policies.remote import RemotePolicy
    from test_server import RunningServer

    class SlowEcho:
        """The server side: answers chunks of 4 actions."""
        metadata = {"action_dim": 4, "chunk_size": 4, "state_dim": 4, "image_keys": ["image"],
                    "observation_keys": ["image", "prompt", "state"], "action_hold": [0.0, 0.0, 0.0, None]}

        def reset(self):
            pass

        def act(self, observation):
            return np.zeros((4, 4), np.float32)

    running = RunningServer(policy=SlowEcho())
    client = RemotePolicy(running.url, timeout_s=1.0, retries=3, backoff_s=0.05)
    robot = FaultyRobot(image_size=16)

    def drop_after_a_while():
        time.sleep(0.3)
        robot.fault_at = time.monotonic()
        running.close()

    threading.Thread(target=drop_after_a_while, daemon=True).start()
    with ControlLoop(client, robot, rate_hz=RATE_HZ, watchdog_ticks=WATCHDOG_TICKS, prompt="reach") as loop:
        report = loop.run(max_steps=200)
    assert report.safe_stop and robot.stop_calls >= 1 and report.steps > 5
    assert robot.time_to_stop <= BUDGET_S + 4 * SLACK_S  # a closed socket is seen after one round trip
    assert "policy late" in report.stop_reason or "connection" in report.stop_reason, report.stop_reason
    asyncio.get_event_loop_policy()  # the server's loop thread has ended; nothing left running


def test_stop_that_fails_is_reported():
    class BrokenStop(FaultyRobot):
        def stop(self):
            super().stop()
            raise OSError("e-stop relay does not answer")

    robot = BrokenStop(fault="observe_raises")
    with ControlLoop(FakePolicy(), robot, rate_hz=RATE_HZ) as loop:
        report = loop.run(max_steps=20)
    assert report.safe_stop and "camera unplugged" in report.stop_reason
    assert "robot.stop() failed: OSError: e-stop relay does not answer" in report.stop_reason
