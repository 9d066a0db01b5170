"""`ControlLoop`: a fixed-rate loop from a policy to a robot, with chunk execution, a safety filter
and a watchdog.

Every tick (1 / rate_hz seconds) the loop reads an observation, asks the policy for a new chunk
when the current one is used up, filters the next action and sends it. The policy runs in a
worker thread: when its answer is not ready by the tick's deadline the robot holds still, and
after `watchdog_ticks` ticks of holding (a late policy or a stale observation) the loop stops
the robot. Any exception from the policy, the filter or the robot stops the robot too.

An observation may carry a "timestamp" (seconds on the loop's clock, `time.monotonic` by default);
one older than `max_observation_age_s` counts as stale.

With `realtime=False` (simulation) the loop does not sleep or hold: it waits for the policy and
still counts every tick whose work ran past its period as a missed deadline.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from policies.base import Policy, Robot
from policies.chunking import ChunkExecutor
from policies.safety import SafetyFilter


@dataclass
class LoopReport:
    steps: int = 0
    stop_reason: str = ""
    step_ms: list[float] = field(default_factory=list)  # each tick's work: observe, (infer), filter, act
    policy_ms: list[float] = field(default_factory=list)  # each policy call
    missed_deadlines: int = 0
    holds: int = 0
    clamped: int = 0
    rate_limited: int = 0
    safe_stop: bool = False

    def summary(self) -> dict:
        def pct(values, q):
            return float(np.percentile(values, q)) if values else 0.0

        return {
            "steps": self.steps,
            "stop_reason": self.stop_reason,
            "safe_stop": self.safe_stop,
            "step_p50_ms": pct(self.step_ms, 50),
            "step_p99_ms": pct(self.step_ms, 99),
            "policy_p50_ms": pct(self.policy_ms, 50),
            "policy_p99_ms": pct(self.policy_ms, 99),
            "policy_calls": len(self.policy_ms),
            "missed_deadlines": self.missed_deadlines,
            "holds": self.holds,
            "clamped": self.clamped,
            "rate_limited": self.rate_limited,
        }


def hold_motion(last_action: np.ndarray | None, action_dim: int, motion_dims: int = 3) -> np.ndarray:
    """Stand still: zero the end-effector deltas and keep the last gripper command."""
    action = np.zeros(action_dim, np.float32) if last_action is None else np.array(last_action, np.float32)
    action[:motion_dims] = 0.0
    return action


class ControlLoop:
    def __init__(
        self,
        policy: Policy,
        robot: Robot,
        rate_hz: float,
        prompt: str | None = None,
        safety: SafetyFilter | None = None,
        chunk_mode: str = "receding",
        execute: int | None = None,
        watchdog_ticks: int = 5,
        max_observation_age_s: float | None = None,
        realtime: bool = True,
        hold_action: Callable[[np.ndarray | None], np.ndarray] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        self.policy = policy
        self.robot = robot
        self.period = 1.0 / rate_hz
        self.prompt = prompt
        self.safety = safety
        self.executor = ChunkExecutor(chunk_mode, execute)
        self.watchdog_ticks = watchdog_ticks
        self.max_observation_age_s = max_observation_age_s if max_observation_age_s is not None else 2 * self.period
        self.realtime = realtime
        action_dim = int(policy.metadata.get("action_dim", 4))
        self.hold_action = hold_action or (lambda last: hold_motion(last, action_dim))
        self.clock = clock
        self.sleep = sleep
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> ControlLoop:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, max_steps: int | None = None, until: Callable[[], bool] | None = None) -> LoopReport:
        """Run until `until()` is true, `max_steps` ticks have passed, or the watchdog stops the robot."""
        report = LoopReport()
        self.executor.reset()
        self.policy.reset()
        if self.safety is not None:
            self.safety.reset()
        pending: concurrent.futures.Future | None = None
        requested_at = 0.0
        waiting_ticks = 0
        last_action: np.ndarray | None = None
        next_tick = self.clock()
        try:
            while (max_steps is None or report.steps < max_steps) and not (until and until()):
                tick = self.clock()
                deadline = tick + self.period
                observation = self.robot.get_observation()
                action = None
                if self._stale(observation, tick):
                    reason = "stale observation"
                else:
                    reason = "policy late"
                    if self.executor.needs_chunk() and pending is None:
                        request = dict(observation)
                        if self.prompt is not None:
                            request["prompt"] = self.prompt
                        requested_at = self.clock()
                        pending = self._pool.submit(self.policy.act, request)
                    if pending is not None:
                        timeout = max(0.0, deadline - self.clock()) if self.realtime else None
                        try:
                            chunk = pending.result(timeout=timeout)
                        except concurrent.futures.TimeoutError:
                            chunk = None
                        if chunk is not None:
                            report.policy_ms.append(1000 * (self.clock() - requested_at))
                            self.executor.add_chunk(chunk)
                            pending = None
                    if not self.executor.needs_chunk() or (self.executor.mode == "ensemble" and pending is None):
                        action = self.executor.next_action()
                        if self.safety is not None:
                            action = self.safety(action)
                if action is None:
                    waiting_ticks += 1
                    report.holds += 1
                    if waiting_ticks > self.watchdog_ticks:
                        report.stop_reason = f"watchdog: {reason} for {waiting_ticks} ticks"
                        self._safe_stop(report)
                        return report
                    action = self.hold_action(last_action)
                else:
                    waiting_ticks = 0
                    last_action = action
                self.robot.apply_action(action)
                report.steps += 1
                work = self.clock() - tick
                report.step_ms.append(1000 * work)
                if work > self.period:
                    report.missed_deadlines += 1
                if self.realtime:
                    next_tick += self.period
                    delay = next_tick - self.clock()
                    if delay > 0:
                        self.sleep(delay)
                    else:
                        next_tick = self.clock()  # behind: start the next tick now instead of bursting
            report.stop_reason = report.stop_reason or ("done" if until and until() else "max steps")
        except Exception as err:  # the robot must stop whatever went wrong
            report.stop_reason = f"error: {type(err).__name__}: {err}"
            self._safe_stop(report)
        finally:
            if self.safety is not None:
                report.clamped, report.rate_limited = self.safety.clamped, self.safety.rate_limited
        return report

    def _stale(self, observation: dict, now: float) -> bool:
        stamp = observation.get("timestamp")
        return stamp is not None and now - float(stamp) > self.max_observation_age_s

    def _safe_stop(self, report: LoopReport) -> None:
        report.safe_stop = True
        try:
            self.robot.stop()
        except Exception as err:
            report.stop_reason += f"; robot.stop() failed: {err}"
