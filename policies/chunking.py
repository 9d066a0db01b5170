"""Executing action chunks on a tick clock: receding horizon or temporal ensembling.

A chunk predicted from the observation of tick t holds the actions for ticks t, t+1, ..., t+K-1.
Chunks are indexed by the tick they were observed at, so a chunk that arrives late has the
actions of the ticks that have passed dropped, never replayed:

    executor = ChunkExecutor(mode="receding", execute=4)
    if executor.needs_chunk(tick):
        executor.add_chunk(policy.act(obs), observed_at=tick)    # [K, D]
    action = executor.action(tick)                               # [D], or None: no chunk covers this tick
"""

from __future__ import annotations

import numpy as np

MODES = ("receding", "ensemble")


class ChunkExecutor:
    """receding: run the first `execute` actions of each chunk, then ask again; `lead` ticks earlier
    when inference takes that long (the rest of the chunk covers the wait).
    ensemble: ask every tick and average every chunk's prediction for the current tick, weighting
    older predictions by exp(-decay * age) (ACT's temporal ensembling)."""

    def __init__(self, mode: str = "receding", execute: int | None = None, decay: float = 0.1):
        if mode not in MODES:
            raise ValueError(f"chunk mode must be one of {MODES}, got {mode!r}")
        if execute is not None and execute < 1:
            raise ValueError(f"execute must be at least 1, got {execute}")
        self.mode = mode
        self.execute = execute
        self.decay = decay
        self.reset()

    def reset(self) -> None:
        self._chunks: list[tuple[int, np.ndarray]] = []  # (tick observed at, chunk [K, D]), oldest first

    @property
    def latest_observed_at(self) -> int | None:
        return self._chunks[-1][0] if self._chunks else None

    def needs_chunk(self, tick: int, lead: int = 0) -> bool:
        """Whether to ask for a new chunk at `tick`, `lead` ticks before the current one is used up."""
        if self.mode == "ensemble" or not self._chunks:
            return True
        return tick - self._chunks[-1][0] >= max(1, self._horizon() - lead)

    def used_up(self, tick: int) -> bool:
        """Whether the current chunk's executed part is over at `tick` (a new chunk is due now)."""
        if self.mode == "ensemble" or not self._chunks:
            return True
        return tick - self._chunks[-1][0] >= self._horizon()

    def _horizon(self) -> int:
        chunk = self._chunks[-1][1]
        return min(self.execute or len(chunk), len(chunk))

    def add_chunk(self, chunk: np.ndarray, observed_at: int) -> None:
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 2 or len(chunk) == 0:
            raise ValueError(f"an action chunk must be [K, D] with K >= 1, got shape {chunk.shape}")
        if self.mode == "receding":
            self._chunks = [(observed_at, chunk)]
        else:
            self._chunks = [(t, c) for t, c in self._chunks if t + len(c) > observed_at] + [(observed_at, chunk)]

    def action(self, tick: int) -> np.ndarray | None:
        if self.mode == "receding":
            if not self._chunks:
                return None
            start, chunk = self._chunks[0]
            index = tick - start
            return chunk[index].copy() if 0 <= index < len(chunk) else None
        live = [(t, c) for t, c in self._chunks if 0 <= tick - t < len(c)]
        if not live:
            return None
        actions = np.stack([c[tick - t] for t, c in live])
        weights = np.exp(-self.decay * np.arange(len(live)))  # oldest first, ACT's convention
        return ((weights[:, None] * actions).sum(0) / weights.sum()).astype(np.float32)
