"""Small models and fake data shared by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policies.actions import action_statistics

INSTRUCTIONS = ["reach the red cube", "move to the blue block", "pick up the green cube", "go to the red block"]

# Small enough to build in a fraction of a second.
TINY_OVERRIDES = {
    "vision": {"image_size": 32, "patch_size": 16, "width": 32, "depth": 2, "heads": 2, "feature_layers": [0, -1]},
    "backbone": {"hidden_size": 32, "intermediate_size": 64, "layers": 2, "heads": 2, "kv_heads": 1},
    "chunk_size": 2,
    "prefix_actions": 0,
    "max_prompt_tokens": 40,
    "text_vocab_size": 300,
}


def fake_norm_stats(seed: int = 0, action_dim: int = 4, state_dim: int = 4) -> dict:
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, (500, action_dim))
    actions[:, -1] = np.where(rng.random(500) < 0.5, -1.0, 1.0)  # a binary gripper
    return {"action": action_statistics(actions), "state": action_statistics(rng.normal(size=(500, state_dim)))}


def write_tokenizer(directory: Path) -> Path:
    from vla.model.text import train_bpe

    path = Path(directory) / "tokenizer.json"
    train_bpe(INSTRUCTIONS, 300).save(str(path))
    return path


def make_model(directory: Path, seed: int = 0, **overrides):
    import torch

    from vla.config import merge
    from vla.model.config import load_model_config
    from vla.model.vla import VLA

    torch.manual_seed(seed)
    config = load_model_config("tiny", merge(TINY_OVERRIDES, overrides))
    return VLA.create(config, write_tokenizer(directory), fake_norm_stats()).eval()


def observation(seed: int = 0, size: int = 32, prompt: str = "reach the red cube") -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "state": rng.normal(size=4).astype(np.float32),
        "prompt": prompt,
    }


def sharpen(model, factor: float = 50.0) -> None:
    """Scale the output matrix so argmax margins dwarf float noise (untrained logits are near-ties)."""
    import torch

    with torch.no_grad():
        model._llama_base().get_output_embeddings().weight.mul_(factor)


class RecordingRobot:
    """A fake robot for the robot runner: random observations; records the actions it is sent."""

    instances: list["RecordingRobot"] = []

    def __init__(self, image_size: int = 32, state_dim: int = 4, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.image_size, self.state_dim = image_size, state_dim
        self.actions: list[np.ndarray] = []
        self.stopped = False
        RecordingRobot.instances.append(self)

    def get_observation(self) -> dict:
        size = self.image_size
        return {"image": self.rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                "state": self.rng.normal(size=self.state_dim).astype(np.float32)}

    def apply_action(self, action) -> None:
        self.actions.append(np.array(action))

    def stop(self) -> None:
        self.stopped = True
