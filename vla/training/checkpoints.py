"""Training checkpoints: a policy directory plus the trainer's state, written atomically.

    DIR/checkpoints/step_000500/   config.json model.safetensors norm_stats.json tokenizer.json trainer_state.pt
    DIR/policy/                    the final policy (a plain checkpoint directory)

Weights and optimizer state are saved whole (unsharded, keyed by parameter name) through
torch.distributed.checkpoint's state-dict API, which reads the same from a plain module, DDP and
FSDP (1 and 2); so a run can resume on a different number of processes or a different wrapping.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_optimizer_state_dict

from vla.errors import CheckpointError

TRAINER_STATE = "trainer_state.pt"


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / TRAINER_STATE).exists())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def rng_states() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def gather_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts on the CPU, keyed by parameter name, whatever wraps
    `model` (nothing, DDP, FSDP). Every process must call it; the tensors arrive on rank 0 only."""
    distributed = dist.is_available() and dist.is_initialized()
    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=distributed))


def restore_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load an unsharded optimizer state (from `gather_full_state`) into a possibly sharded optimizer.
    Every process must call it, with the whole state."""
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def save_checkpoint(run_dir: Path, step: int, model, weights: dict, trainer_state: dict, keep: int) -> Path:
    """Write DIR/checkpoints/step_N (policy + trainer state) atomically, then drop all but the last `keep`.

    `model` gives the config, tokenizer and statistics; `weights` its unsharded state dict."""
    final = Path(run_dir) / "checkpoints" / f"step_{step:06d}"
    model.save_pretrained(final, weights)  # atomic on its own
    tmp = final / f".{TRAINER_STATE}.tmp"
    torch.save(trainer_state, tmp)
    os.replace(tmp, final / TRAINER_STATE)
    for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(checkpoint: Path) -> dict:
    try:
        return torch.load(checkpoint / TRAINER_STATE, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"{checkpoint / TRAINER_STATE}: cannot load ({str(err).splitlines()[0]})") from None


def resolve_policy_dir(path: str | Path) -> Path:
    """A checkpoint directory, a training run (its policy/ or latest checkpoint), or an exported policy."""
    path = Path(path)
    if (path / "config.json").exists() or (path / "policy.json").exists():
        return path
    if (path / "policy" / "config.json").exists():
        return path / "policy"
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest
    raise CheckpointError(f"{path}: neither a checkpoint (config.json), an export (policy.json) nor a training run")
