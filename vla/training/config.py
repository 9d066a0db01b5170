"""Training recipe: YAML in configs/train/, with `--set key=value` overrides."""

from __future__ import annotations

from dataclasses import dataclass, field

from vla.config import apply_overrides, find_config, from_dict, load_yaml, merge
from vla.errors import ConfigError
from vla.model.config import ModelConfig


@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=list)
    augment_shift: int = 4  # pixels of random translation; 0 = off
    # "lazy": frames are read from the stores as batches need them (memory does not grow with the data);
    # "memory": loaded once at start (a little faster for data that fits).
    frames: str = "lazy"
    workers: int = 0  # DataLoader processes that prepare the next batches while a step runs
    val_episodes: float = 0.0  # episodes held out for a validation loss: a fraction (< 1) or a count
    # With model.prefix_actions: the share of samples given a committed prefix of 1..prefix_actions of
    # their own actions; the rest see none, as in closed-loop evaluation (measured: conditioning every
    # sample, uniform over 0..2, took the demo from 50/50 to 22/50 at 1,500 steps).
    prefix_probability: float = 0.5
    # The share of samples whose instruction has random words swapped in (vla.data.dataset.noisy_instruction),
    # for phrasings the demonstrations never used (measured at 0.5 on Lift: 17/50 against 24/50, and held-out
    # phrasings 12/50 against 20/50; off by default).
    instruction_noise: float = 0.0
    # The share of samples whose instruction has words left out (vla.data.dataset.dropped_words), as a
    # lexicon leaves out the words of a new phrasing it has no taught word for. It shortens prompts, so
    # unlike the noise it costs no throughput.
    instruction_dropout: float = 0.0
    # What standing still means per action dimension (a number for a delta dimension, null for an
    # absolute one); None: what the data records (`vla collect` and `vla data import` record it).
    action_hold: list | None = None


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    vision_lr_scale: float = 1.0  # learning rate of the vision encoders relative to `lr`


@dataclass
class EvalDuringTraining:
    every: int = 0  # evaluate in simulation every this many steps and at the end; 0 = never
    episodes: int = 10  # per task
    suite: str | None = None  # evaluate every task of this suite (configs/suites/); None: the data's own task
    seed: int = 100_000
    workers: int = 1
    val_every: int = 100  # validation loss (with data.val_episodes) every this many steps and at the end
    val_batches: int = 4


@dataclass
class TrainConfig:
    model_preset: str = "tiny"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalDuringTraining = field(default_factory=EvalDuringTraining)
    steps: int = 1000
    batch_size: int = 64  # global batch per optimizer step, across processes and accumulation
    grad_accum: int = 1
    seed: int = 0
    deterministic: bool = False
    mixed_precision: str = "auto"  # auto: bf16 on a GPU, fp32 on a CPU; or "no", "bf16"
    threads: int = 0  # torch CPU threads; 0 = torch's default
    # torch.compile the model's forward and backward (about a minute of compiling first; measured by
    # benchmarks/train_throughput.py --compile). The weights, checkpoints and exports are the same.
    compile: bool = False
    log_every: int = 25
    checkpoint_every: int = 500
    keep_checkpoints: int = 2


def load_train_config(path: str, overrides: list[str] | None = None) -> TrainConfig:
    """Recipe YAML + dotted overrides -> TrainConfig. The model section is the preset named by
    `model_preset` with the recipe's `model:` keys on top."""
    data = apply_overrides(load_yaml(find_config(path, "train")), overrides or [])
    preset = data.get("model_preset", TrainConfig.model_preset)
    preset_data = load_yaml(find_config(preset, "model"))
    data["model"] = merge(preset_data, data.get("model") or {})
    config = from_dict(TrainConfig, data)
    if config.mixed_precision not in ("auto", "no", "bf16"):
        raise ConfigError(f"mixed_precision must be auto, no or bf16, got {config.mixed_precision!r}")
    if config.steps < 1 or config.batch_size < 1 or config.grad_accum < 1:
        raise ConfigError("steps, batch_size and grad_accum must be at least 1")
    return config
