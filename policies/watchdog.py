"""A watchdog in its own thread: it stops the robot when the control loop stops making progress.

The loop calls `kick(activity)` at the start of every tick and names each driver call it makes
(`activity("robot.apply_action()")`). If no kick arrives within `timeout_s`, the watchdog calls
`on_timeout(reason)` once, from its own thread, while the loop may still be blocked in the driver;
so a hung `get_observation()` or `apply_action()` cannot keep the robot moving.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class Watchdog:
    def __init__(self, timeout_s: float, on_timeout: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        if timeout_s <= 0:
            raise ValueError(f"the watchdog's timeout must be positive, got {timeout_s}")
        self.timeout_s = timeout_s
        self.on_timeout = on_timeout
        self.clock = clock
        self.fired = threading.Event()
        self.reason = ""
        self._activity = "starting"
        self._last_kick = clock()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Watchdog:
        self.kick("tick")
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._thread.start()
        return self

    def kick(self, activity: str = "tick") -> None:
        with self._lock:
            self._last_kick = self.clock()
            self._activity = activity

    def activity(self, activity: str) -> None:
        """Name what the loop is doing now, without resetting the deadline."""
        with self._lock:
            self._activity = activity

    def close(self) -> None:
        self._done.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _watch(self) -> None:
        poll = min(self.timeout_s / 4, 0.05)
        while not self._done.wait(poll):
            with self._lock:
                late = self.clock() - self._last_kick
                activity = self._activity
            if late > self.timeout_s:
                self.reason = f"watchdog: {activity} ran {late * 1000:.0f} ms, past the {self.timeout_s * 1000:.0f} ms budget"
                self.fired.set()
                try:
                    self.on_timeout(self.reason)
                finally:
                    self._done.set()
                return
