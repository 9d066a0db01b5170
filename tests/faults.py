"""Fault injection for the control loop: a robot and a policy that fail in the ways real ones do.

Used by tests/test_faults.py (which asserts the robot is stopped in time, for the reason named) and by
benchmarks/fault_stops.py (which prints the table in the README).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

RATE_HZ = 50.0
WATCHDOG_TICKS = 3
BUDGET_S = WATCHDOG_TICKS / RATE_HZ  # the loop's promise: stopped within this many seconds of a fault


class FaultyRobot:
    """Fake robot. `fault` at tick `at`: observe_hangs, act_hangs, observe_raises, act_raises, stale
    (the camera freezes: the same timestamp from then on), interrupt (Ctrl-C inside the driver).
    Records when the fault began and when stop() was called."""

    def __init__(self, fault: str | None = None, at: int = 3, image_size: int = 8, with_hold: bool = False):
        self.fault, self.at, self.image_size = fault, at, image_size
        self.observations = 0
        self.actions: list[np.ndarray] = []
        self.holds = 0
        self.stop_calls = 0
        self.fault_at: float | None = None
        self.stopped_at: float | None = None
        self.release = threading.Event()  # ends a hang, so the test's threads finish
        self.stamp = time.monotonic()
        if with_hold:
            self.hold = self._hold

    def _begin(self) -> None:
        if self.fault_at is None:
            self.fault_at = time.monotonic()

    def get_observation(self) -> dict:
        self.observations += 1
        if self.observations >= self.at:
            if self.fault == "observe_hangs":
                self._begin()
                self.release.wait(10)
            elif self.fault == "observe_raises":
                self._begin()
                raise ConnectionError("camera unplugged")
            elif self.fault == "interrupt":
                self._begin()
                raise KeyboardInterrupt
        if self.fault != "stale" or self.observations < self.at:
            self.stamp = time.monotonic()
        elif self.fault_at is None:
            self.fault_at = self.stamp  # the last fresh frame
        return {"image": np.zeros((self.image_size, self.image_size, 3), np.uint8), "state": np.zeros(4, np.float32),
                "timestamp": self.stamp}

    def apply_action(self, action) -> None:
        if len(self.actions) + 1 >= self.at:
            if self.fault == "act_hangs":
                self._begin()
                self.release.wait(10)
            elif self.fault == "act_raises":
                self._begin()
                raise TimeoutError("servo bus timeout")
        self.actions.append(np.array(action))

    def _hold(self) -> None:
        self.holds += 1

    def stop(self) -> None:
        self.stop_calls += 1
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()

    @property
    def time_to_stop(self) -> float | None:
        if self.stopped_at is None or self.fault_at is None:
            return None
        return self.stopped_at - self.fault_at


class FakePolicy:
    """Chunks of 4 actions of 4 dimensions; row i holds i / 10. Faults: `delay` seconds per call,
    `first_delay` for the first call only, `nan` chunks (always, or after `nan_after` calls), an exception
    after `fail_after` calls, no answer after `hang_after` calls."""

    def __init__(self, chunk=None, delay: float = 0.0, first_delay: float = 0.0, nan: bool = False,
                 fail_after: int | None = None, hang_after: int | None = None, nan_after: int | None = None,
                 hold=(0.0, 0.0, 0.0, None)):
        self.chunk = np.tile(np.arange(4, dtype=np.float32)[:, None] / 10, (1, 4)) if chunk is None else chunk
        if nan:
            self.chunk = np.full_like(self.chunk, np.nan)
        self.delay, self.first_delay = delay, first_delay
        self.fail_after, self.hang_after, self.nan_after = fail_after, hang_after, nan_after
        self.calls = 0
        self.fault_at: float | None = None
        self.metadata = {"action_dim": self.chunk.shape[1], "chunk_size": len(self.chunk), "action_hold": list(hold)}

    def reset(self) -> None:
        pass

    def act(self, observation: dict) -> np.ndarray:
        self.calls += 1
        if self.calls == 1 and self.first_delay:
            time.sleep(self.first_delay)
        if self.fail_after is not None and self.calls > self.fail_after:
            self.fault_at = time.monotonic()
            raise RuntimeError("model exploded")
        if self.hang_after is not None and self.calls > self.hang_after:
            self.fault_at = time.monotonic()
            threading.Event().wait(10)
        if self.delay:
            time.sleep(self.delay)
        if self.nan_after is not None and self.calls > self.nan_after:
            self.fault_at = time.monotonic()
            return np.full_like(self.chunk, np.nan)
        return self.chunk.copy()


@dataclass
class Scenario:
    name: str
    does: str  # what the loop does, for the README table
    reason: str  # a substring of the stop reason
    robot: dict = field(default_factory=dict)
    policy: dict = field(default_factory=dict)
    raises: type | None = None
    loop: dict = field(default_factory=dict)  # ControlLoop settings of the scenario


SCENARIOS = [
    Scenario("get_observation() hangs", "watchdog thread calls stop() while the call is still blocked",
             "robot.get_observation()", robot={"fault": "observe_hangs"}),
    Scenario("apply_action() hangs", "watchdog thread calls stop() while the call is still blocked",
             "robot.apply_action()", robot={"fault": "act_hangs"}),
    Scenario("get_observation() raises", "stop(), the error is the stop reason", "camera unplugged",
             robot={"fault": "observe_raises"}),
    Scenario("apply_action() raises", "stop(), the error is the stop reason", "servo bus timeout",
             robot={"fault": "act_raises"}),
    Scenario("policy returns NaN", "refused before anything is sent: stop()", "non-finite",
             policy={"nan": True}),
    Scenario("policy returns NaN mid-run", "the safety filter refuses it: stop(), the NaN is not sent",
             "non-finite", policy={"nan_after": 4}),
    Scenario("policy raises", "stop(), the error is the stop reason", "model exploded", policy={"fail_after": 3}),
    Scenario("policy never answers", "holds, then stop() after the watchdog's ticks", "policy late",
             policy={"hang_after": 3}),
    Scenario("get_observation() hangs at start", "the warm-up's observation is watched: stop() while it is blocked",
             "robot.get_observation() (warm-up)", robot={"fault": "observe_hangs", "at": 1}),
    Scenario("the first inference never answers", "stop() after the warm-up timeout (300 s by default, 0.05 s "
             "here); nothing was sent", "did not answer within", policy={"hang_after": 0},
             loop={"warmup_timeout_s": 0.05}),
    Scenario("observation goes stale", "holds (no inference on a stale frame), then stop()", "stale observation",
             robot={"fault": "stale"}),
    Scenario("Ctrl-C in a driver call", "stop(), then KeyboardInterrupt is raised again", "interrupted",
             robot={"fault": "interrupt"}, raises=KeyboardInterrupt),
]


def run_scenario(scenario: Scenario):
    """-> (report, robot, policy, seconds from the fault to stop())."""
    from policies.control_loop import ControlLoop

    robot, policy = FaultyRobot(**scenario.robot), FakePolicy(**scenario.policy)
    loop = ControlLoop(policy, robot, rate_hz=RATE_HZ, watchdog_ticks=WATCHDOG_TICKS, execute=2, **scenario.loop)
    report = None

    def release_after_stop() -> None:  # a hung call stays blocked a little past stop(), then returns
        while robot.stopped_at is None and not robot.release.is_set():
            time.sleep(0.005)
        time.sleep(0.1)
        robot.release.set()

    threading.Thread(target=release_after_stop, daemon=True).start()
    try:
        report = loop.run(max_steps=100)
    except BaseException as err:
        if scenario.raises is None or not isinstance(err, scenario.raises):
            raise
    finally:
        robot.release.set()
    fault_at = robot.fault_at if robot.fault_at is not None else policy.fault_at
    if robot.fault == "stale" and fault_at is not None:
        fault_at += loop.max_observation_age_s  # when the last fresh frame became stale
    if scenario.policy.get("nan"):
        fault_at = robot.stopped_at  # refused at the first answer, in the warm-up, before anything moved
    elapsed = None if robot.stopped_at is None or fault_at is None else robot.stopped_at - fault_at
    return report, robot, policy, elapsed
