"""`ControlLoop`: a fixed-rate loop from a policy to a robot, with pipelined chunks, a safety filter
and a watchdog of its own.

Every tick (1 / rate_hz seconds) the loop reads an observation, takes the action that the current
chunk holds for this tick, filters it and sends it. Inference runs in a worker thread and starts
`lead` ticks before the current chunk runs out (`lead` is measured from the policy's latency unless
given), so a policy that needs longer than a tick does not leave the robot idle at chunk
boundaries; a chunk that arrives late has the actions of the ticks already passed dropped. A policy
whose metadata declares `prefix_actions` is sent the actions the current chunk still runs during the
inference (`action_prefix`), and predicts the rest of its chunk consistent with them (real-time chunking).

When no action covers a tick (a late policy, a stale observation) the robot holds: `robot.hold()`
where the robot offers it, else the policy's hold vector (0 for delta dimensions, the last command
for absolute ones), clamped to the bounds; nothing is sent before the first real action. After
`watchdog_ticks` ticks without an action the loop stops the robot. A watchdog thread stops it as well
when a tick, or a driver call inside it, runs past `watchdog_ticks` periods, even while that call
is still blocked. Any exception stops the robot; KeyboardInterrupt and other BaseExceptions stop it
and are raised again.

Before the first tick the policy answers `warmup` untimed calls (CUDA or TensorRT start-up, caches),
which count neither as missed deadlines nor against the watchdog's tick budget; a warm-up call that has not
answered after `warmup_timeout_s` stops the robot. The observation the warm-up reads is watched like any
other driver call.

An observation may carry a "timestamp" (seconds on the loop's clock, `time.monotonic` by default);
one older than `max_observation_age_s` counts as stale.

With `realtime=False` (simulation) the loop does not sleep, hold or pipeline: it waits for the
policy, and still counts every tick whose work ran past its period as a missed deadline.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from policies.base import Policy, Robot
from policies.chunking import ChunkExecutor
from policies.safety import SafetyFilter, UnsafeAction
from policies.watchdog import Watchdog


@dataclass
class LoopReport:
    steps: int = 0  # ticks run
    stop_reason: str = ""
    step_ms: list[float] = field(default_factory=list)  # each tick's work: observe, filter, act
    policy_ms: list[float] = field(default_factory=list)  # each inference, request to answer
    warmup_ms: list[float] = field(default_factory=list)
    missed_deadlines: int = 0
    startup_ticks: int = 0  # ticks before the first action (nothing is sent)
    holds: int = 0  # ticks after the first action with no action to run: the robot held
    chunk_switches: int = 0
    boundary_jumps: list[float] = field(default_factory=list)  # largest |change| of the action at each switch
    dropped_actions: int = 0  # actions of late chunks whose ticks had passed
    clamped: int = 0
    rate_limited: int = 0
    safe_stop: bool = False
    lead_ticks: int = 0

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
            "warmup_ms": self.warmup_ms,
            "lead_ticks": self.lead_ticks,
            "missed_deadlines": self.missed_deadlines,
            "startup_ticks": self.startup_ticks,
            "holds": self.holds,
            "chunk_switches": self.chunk_switches,
            "boundary_jump_max": max(self.boundary_jumps, default=0.0),
            "boundary_jump_mean": float(np.mean(self.boundary_jumps)) if self.boundary_jumps else 0.0,
            "dropped_actions": self.dropped_actions,
            "clamped": self.clamped,
            "rate_limited": self.rate_limited,
        }


SEND_MARGIN = 0.2  # of a tick: what is left for filtering and sending once the chunk arrives


class _Stopped(Exception):
    """The watchdog stopped the robot; the loop unwinds."""


def _run_in_thread(fn, *args) -> concurrent.futures.Future:
    """fn(*args) in a daemon thread: a policy that never returns must not keep the process alive."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def work():
        try:
            future.set_result(fn(*args))
        except BaseException as err:  # handed to the loop, which stops the robot
            future.set_exception(err)

    threading.Thread(target=work, name="policy", daemon=True).start()
    return future


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
        lead_ticks: int | None = None,
        watchdog_ticks: int = 5,
        max_observation_age_s: float | None = None,
        realtime: bool = True,
        warmup: int = 2,
        warmup_timeout_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        if watchdog_ticks < 1:
            raise ValueError(f"watchdog_ticks must be at least 1, got {watchdog_ticks}")
        self.policy = policy
        self.robot = robot
        self.period = 1.0 / rate_hz
        self.prompt = prompt
        meta = policy.metadata
        if safety is None:  # no bounds, but NaN, inf and wrong shapes still stop the robot
            dim = int(meta["action_dim"])
            safety = SafetyFilter([-np.inf] * dim, [np.inf] * dim)
        if safety.hold_values is None:
            safety.set_hold(meta.get("action_hold"))
        self.safety = safety
        self.executor = ChunkExecutor(chunk_mode, execute)
        self.lead_ticks = lead_ticks
        self.watchdog_ticks = watchdog_ticks
        self.max_observation_age_s = max_observation_age_s if max_observation_age_s is not None else 2 * self.period
        self.realtime = realtime
        self.warmup = warmup
        self.warmup_timeout_s = warmup_timeout_s
        self.clock = clock
        self.sleep = sleep
        self._latencies: deque[float] = deque(maxlen=8)
        self._warm = False
        self._robot_holds = callable(getattr(robot, "hold", None))
        self._stop_lock = threading.Lock()
        self._stopped = False

    def close(self) -> None:
        """Nothing to release (workers are daemon threads); kept for `with` blocks."""

    def __enter__(self) -> ControlLoop:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the loop
    def run(self, max_steps: int | None = None, until: Callable[[], bool] | None = None) -> LoopReport:
        """Run until `until()` is true, `max_steps` ticks have passed, or the robot is stopped."""
        report = LoopReport()
        self.executor.reset()
        self.policy.reset()
        self.safety.reset()
        self._stopped = False
        watchdog = None
        try:
            if self.realtime:
                watchdog = Watchdog(self.watchdog_ticks * self.period, lambda why: self._safe_stop(report, why),
                                    clock=self.clock).start()
            if not self._warm:
                self._warm_up(report, watchdog)
            report.lead_ticks = lead = self._lead()
            self._ticks(report, lead, watchdog, max_steps, until)
            report.stop_reason = report.stop_reason or ("done" if until and until() else "max steps")
        except _Stopped:
            pass
        except Exception as err:  # the robot must stop whatever went wrong
            self._safe_stop(report, f"error: {type(err).__name__}: {err}")
        except BaseException as err:  # Ctrl-C, SystemExit: stop, then let it through
            self._safe_stop(report, f"interrupted: {type(err).__name__}")
            raise
        finally:
            if watchdog is not None:
                watchdog.close()
            report.clamped, report.rate_limited = self.safety.clamped, self.safety.rate_limited
        return report

    def _ticks(self, report: LoopReport, lead: int, watchdog: Watchdog | None, max_steps, until) -> None:
        pending: concurrent.futures.Future | None = None
        pending_tick = 0
        requested_at = 0.0
        waiting = 0  # consecutive ticks without an action
        sent_any = False
        source = None  # the tick the running chunk was observed at
        previous: np.ndarray | None = None
        next_tick = self.clock()
        tick = 0

        def driver(name: str, call, *args):
            return self._driver(watchdog, name, call, *args)

        def collect(timeout: float | None) -> None:
            nonlocal pending
            try:
                chunk = pending.result(timeout=timeout)
            except concurrent.futures.TimeoutError:
                return
            report.policy_ms.append(1000 * (self.clock() - requested_at))
            self._latencies.append(self.clock() - requested_at)
            self.executor.add_chunk(chunk, observed_at=pending_tick)
            report.dropped_actions += max(0, tick - pending_tick)
            pending = None

        while (max_steps is None or report.steps < max_steps) and not (until and until()):
            start = self.clock()
            deadline = start + self.period
            if watchdog is not None:
                watchdog.kick(f"tick {tick}")
            observation = driver("robot.get_observation()", self.robot.get_observation)
            stale = self._stale(observation, start)
            if pending is not None and pending.done():
                collect(0)
            if not stale and pending is None and self.executor.needs_chunk(tick, lead if self.realtime else 0):
                request = dict(observation)
                if self.prompt is not None:
                    request["prompt"] = self.prompt
                committed = self._committed(tick, lead)
                if committed is not None:
                    request["action_prefix"] = committed
                requested_at, pending_tick = self.clock(), tick
                pending = _run_in_thread(self.policy.act, request)
            if pending is not None and (not self.realtime or self.executor.used_up(tick)):
                # The new chunk is due now: wait for it (until the deadline, in real time); a pipelined
                # request made earlier is not waited for, the current chunk covers the wait.
                collect(max(0.0, deadline - self.clock()) if self.realtime else None)
            action = self.executor.action(tick)
            if action is None:
                waiting += 1
                if sent_any:
                    report.holds += 1
                else:
                    report.startup_ticks += 1
                if waiting >= self.watchdog_ticks:
                    why = "stale observation" if stale else "policy late"
                    self._safe_stop(report, f"watchdog: {why} for {waiting} ticks")
                    return
                held = self.safety.hold()
                if held is not None:  # nothing is sent before the first real action
                    if self._robot_holds:
                        driver("robot.hold()", self.robot.hold)
                    else:
                        driver("robot.apply_action()", self.robot.apply_action, held)
                    previous = held
            else:
                waiting = 0
                action = self.safety(action)
                observed_at = self.executor.latest_observed_at
                if sent_any and observed_at != source and self.executor.mode == "receding":
                    report.chunk_switches += 1
                    report.boundary_jumps.append(float(np.abs(action - previous).max()))
                source = observed_at
                driver("robot.apply_action()", self.robot.apply_action, action)
                previous, sent_any = action, True
            report.steps += 1
            tick += 1
            work = self.clock() - start
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

    # ------------------------------------------------------------------ pieces
    def _driver(self, watchdog: Watchdog | None, name: str, call, *args):
        """A call into the robot's driver, named for the watchdog."""
        if self._stopped:  # the watchdog stopped the robot since the last call: send nothing more
            raise _Stopped
        if watchdog is not None:
            watchdog.activity(name)
        result = call(*args)
        if self._stopped:  # stopped while this call ran (it may have moved the robot): stop again
            self._stop_robot()
            raise _Stopped
        return result

    def _warm_up(self, report: LoopReport, watchdog: Watchdog | None) -> None:
        """Untimed inferences before the first tick; the last one's latency seeds the lead estimate.
        The watchdog is kept fed while the policy works, up to `warmup_timeout_s` per call."""
        if self.warmup <= 0:
            self._warm = True
            return
        if watchdog is not None:
            watchdog.kick("warm-up")
        request = dict(self._driver(watchdog, "robot.get_observation() (warm-up)", self.robot.get_observation))
        if self.prompt is not None:
            request["prompt"] = self.prompt
        for _ in range(self.warmup):
            started = self.clock()
            answer = _run_in_thread(self.policy.act, request)
            while True:
                try:
                    chunk = np.asarray(answer.result(timeout=self.period), np.float32)
                    break
                except concurrent.futures.TimeoutError:
                    if self.clock() - started > self.warmup_timeout_s:
                        raise UnsafeAction(f"warm-up: the policy did not answer within {self.warmup_timeout_s:g} s")
                    if self._stopped:
                        raise _Stopped from None
                    if watchdog is not None:
                        watchdog.kick("policy warm-up")
            report.warmup_ms.append(1000 * (self.clock() - started))
            if chunk.ndim != 2 or chunk.shape[1:] != self.safety.low.shape:
                raise UnsafeAction(f"warm-up: the policy answered a {list(chunk.shape)} chunk, "
                                   f"the robot takes [K, {self.safety.low.size}]")
            if not np.all(np.isfinite(chunk)):
                raise UnsafeAction("warm-up: the policy answered non-finite actions (NaN or inf)")
        self._latencies.append(report.warmup_ms[-1] / 1000)
        self._warm = True

    def _lead(self) -> int:
        """Ticks before a chunk runs out to ask for the next: the fewest that let the slowest recent
        inference (plus a fifth of a tick to send the action) arrive before the deadline of the tick
        that needs it. The chunk used is then the freshest that can be on time: a 1.5-tick inference
        asked for one tick early arrives half-way through the tick it is needed in."""
        if self.lead_ticks is not None:
            return self.lead_ticks
        if not self.realtime or not self._latencies:
            return 0
        latency = max(self._latencies) + SEND_MARGIN * self.period
        return max(0, math.ceil(latency / self.period) - 1)

    def _committed(self, tick: int, lead: int) -> np.ndarray | None:
        """The actions the current chunk still runs while the next one is inferred, [d, D] (ticks tick ..
        tick+d-1), for a policy that predicts its chunk consistent with them (metadata `prefix_actions`)."""
        capacity = int(self.policy.metadata.get("prefix_actions") or 0)
        if not (self.realtime and lead and capacity and self.executor.mode == "receding"):
            return None
        actions = []
        for i in range(min(lead, capacity)):
            action = self.executor.action(tick + i)
            if action is None:
                break
            actions.append(action)
        return np.stack(actions) if actions else None

    def _stale(self, observation: dict, now: float) -> bool:
        stamp = observation.get("timestamp")
        return stamp is not None and now - float(stamp) > self.max_observation_age_s

    def _stop_robot(self) -> str:
        try:
            self.robot.stop()
            return ""
        except Exception as err:
            return f"; robot.stop() failed: {type(err).__name__}: {err}"

    def _safe_stop(self, report: LoopReport, reason: str) -> None:
        """Stop the robot once per run, from whichever thread sees the fault first."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
            report.safe_stop = True
            report.stop_reason = reason
        report.stop_reason += self._stop_robot()
