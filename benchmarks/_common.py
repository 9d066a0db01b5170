"""Shared by the benchmark scripts: randomly initialised models of a preset (latency does not depend on weights),
and demonstrations collected once and reused."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

INSTRUCTIONS = ["reach the red cube", "move to the green cube", "go to the blue block", "hover over the red block",
                "push the red block to the white circle", "pick up the green block", "lift the blue cube"]


def random_model(preset: str, **overrides):
    """A VLA of the given preset with random weights, a BPE trained on sample instructions and
    synthetic normalization statistics; the built-in sims' action and state sizes (4 and 4) unless
    `overrides` name others (a preset leaves them to the data)."""
    import torch

    from policies.actions import action_statistics
    from vla.model.config import load_model_config
    from vla.model.text import train_bpe
    from vla.model.vla import VLA

    torch.manual_seed(0)
    config = load_model_config(preset, {"action_dim": 4, "state_dim": 4, **overrides})
    tmp = Path(tempfile.mkdtemp())
    train_bpe(INSTRUCTIONS, config.text_vocab_size).save(str(tmp / "tokenizer.json"))
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (1000, config.action_dim))
    stats = {"action": action_statistics(actions), "state": action_statistics(rng.normal(size=(1000, max(config.state_dim, 1))))}
    return VLA.create(config, tmp / "tokenizer.json", stats).eval()


def observation(model, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    size = model.image_size
    obs = {"image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "prompt": INSTRUCTIONS[0]}
    if model.config.state_dim:
        obs["state"] = rng.normal(size=model.config.state_dim).astype(np.float32)
    return obs


def collected(path: Path, task: str, **collect_kwargs) -> Path:
    """`path`, collected with `vla.data.collect.collect(task, out=path, progress=False, **collect_kwargs)` unless it
    exists; written under another name and renamed, so an interrupted collection is never reused."""
    from vla.data.collect import collect

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.hdf5")
        partial.unlink(missing_ok=True)
        collect(task, out=partial, progress=False, **collect_kwargs)
        partial.replace(path)
    return path


def aux_reader(model, store: str | None):
    """observation -> where the auxiliary head places the task's object (m), or None without a target head or
    `store`, the demonstrations whose statistics standardized the head's target (vla/data/dataset.py)."""
    if model.aux_head is None or model.config.aux_loss != "target" or store is None:
        return None
    import h5py
    import torch

    with h5py.File(store, "r") as f:
        positions = np.concatenate([group["obs/target_position"][:] for group in f["data"].values()])
    mean, spread = positions.mean(0), positions.std(0)

    @torch.no_grad()
    def read(observation: dict) -> np.ndarray:
        batch = model.prepare([observation])
        standardized = model.aux_head(model.encode_images(batch), None)[0].float().numpy()
        return mean + standardized * spread

    return read
