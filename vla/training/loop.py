"""The training loop: plain PyTorch with accelerate for devices, processes and mixed precision.

Data order and augmentation are functions of (seed, step) alone, so a resumed run, or the same
global batch split across processes, sees exactly the same samples.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from safetensors.torch import load_model
from tqdm import tqdm

from vla.atomic import atomic_file
from vla.config import diff, from_dict, to_dict
from vla.data.dataset import DemoDataset, compute_norm_stats, load_episodes, validation_split
from vla.data.store import EpisodeReader
from vla.errors import ConfigError, DatasetError
from vla.model.checkpoint import WEIGHTS_FILE, load_weights, observation_encoder
from vla.model.config import ModelConfig
from vla.model.text import TOKENIZER_FILE, train_text_tokenizer
from vla.model.vla import VLA
from vla.training.checkpoints import (
    gather_full_state,
    latest_checkpoint,
    load_trainer_state,
    restore_optimizer,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from vla.training.config import TrainConfig

METRICS_FILE = "metrics.jsonl"


class SampleOrder:
    """An endless stream of sample indices: a fresh permutation per epoch, seeded by (seed, epoch)."""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples = num_samples
        self.seed = seed
        self._cache: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            self._cache = {epoch: torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))}
        return self._cache[epoch]

    def batch(self, step: int, size: int) -> torch.Tensor:
        positions = range(step * size, (step + 1) * size)
        return torch.stack([self._permutation(p // self.num_samples)[p % self.num_samples] for p in positions])


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to `min_ratio`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """Weight decay on matrices only (nanoGPT's split); frozen parameters (LoRA) are left out; the
    vision encoders (ViTs and their FiLM layers) learn at a scaled rate (`optim.vision_lr_scale`)."""
    groups = []
    for vision in (True, False):
        params = [p for name, p in model.named_parameters()
                  if p.requires_grad and name.startswith("vision.encoders.") == vision]
        lr = config.optim.lr * (config.optim.vision_lr_scale if vision else 1.0)
        groups += [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.optim.weight_decay, "lr": lr},
                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.optim.lr, betas=tuple(config.optim.betas))


@dataclass
class Prepared:
    """What the loop needs, built before any step runs (so bad input fails early)."""

    model: VLA
    dataset: DemoDataset
    norm_stats: dict
    tokenizer_file: Path
    resume_from: Path | None
    env_args: dict
    val_dataset: DemoDataset | None = None


class StepBatches(torch.utils.data.Dataset):
    """Step -> (its global sample indices, this process's micro-batches): a function of (seed, step) alone,
    so that DataLoader workers can prepare steps ahead and a resumed run sees the same batches."""

    def __init__(self, dataset: DemoDataset, config: TrainConfig, micro_batches: list[torch.Tensor]):
        self.dataset, self.config, self.micro_batches = dataset, config, micro_batches
        self.order = SampleOrder(len(dataset), config.seed)

    def __len__(self) -> int:
        return self.config.steps

    def __getitem__(self, step: int):
        config, shift = self.config, self.config.data.augment_shift
        indices = self.order.batch(step, config.batch_size)
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        offsets = torch.randint(0, 2 * shift + 1, (config.batch_size, 2), generator=generator)
        prefixes = None
        if config.model.prefix_actions:  # simulated inference delays: 1 .. prefix_actions committed actions
            lengths = torch.randint(1, config.model.prefix_actions + 1, (config.batch_size,), generator=generator)
            given = torch.rand(config.batch_size, generator=generator) < config.data.prefix_probability
            prefixes = torch.where(given, lengths, 0)

        def rewrite_seeds(share: float) -> torch.Tensor | None:
            """int [B]: a seed for `share` of the samples, -1 for the rest; None when share is 0."""
            if not share:
                return None
            chosen = torch.rand(config.batch_size, generator=generator) < share
            return torch.where(chosen, torch.randint(0, 2**31 - 1, (config.batch_size,), generator=generator), -1)

        noise = rewrite_seeds(config.data.instruction_noise)
        dropout = rewrite_seeds(config.data.instruction_dropout)

        def part(values, m):
            return None if values is None else values[m]

        return indices, [self.dataset.batch(indices[m], shift, offsets[m], part(prefixes, m), part(noise, m),
                                            part(dropout, m))
                         for m in self.micro_batches]


def _text_tokenizer(config: TrainConfig, instructions: list[str], out_dir: Path, resume_from: Path | None) -> Path:
    path = out_dir / TOKENIZER_FILE
    if resume_from is not None:
        return resume_from / TOKENIZER_FILE
    if config.model.backbone.pretrained:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.model.backbone.pretrained).backend_tokenizer
    else:
        tokenizer = train_text_tokenizer(config.model.text_tokenizer, instructions, config.model.text_vocab_size)
    # Every rank writes it (the same bytes) and reads it back at once: a plain save truncated the file
    # under another rank's reader.
    with atomic_file(path) as tmp:
        tokenizer.save(str(tmp))
    return path


def resolve_from_data(config: TrainConfig) -> None:
    """Fill the model's open dimensions (cameras, action and state sizes) from the first episode of the
    data, and check the ones the recipe sets against it."""
    if not config.data.paths:
        raise DatasetError("no dataset given (data.paths is empty)")
    first = config.data.paths[0]
    with EpisodeReader(first) as reader:
        if len(reader) == 0:
            raise DatasetError(f"{first}: holds no episodes")
        cameras = reader.camera_keys(0)
        episode = reader.episode(0, keys=("state",))
    model = config.model
    if model.image_keys is None:
        if not cameras:
            raise DatasetError(f"{first}: data/demo_0/obs holds no camera (uint8 [T, H, W, 3])")
        model.image_keys = cameras
    missing = [key for key in model.image_keys if key not in cameras]
    if missing:
        raise DatasetError(f"{first}: has cameras {cameras}, model.image_keys asks for {model.image_keys}")
    data_dim, state_dim = episode.actions.shape[1], episode.observations["state"].shape[1]
    if model.action_dim is None:
        model.action_dim = data_dim
    elif data_dim != model.action_dim:
        raise DatasetError(f"{first}: actions have {data_dim} dimensions but model.action_dim is {model.action_dim} "
                           f"(leave it unset to take the data's)")
    if model.state_dim is None:
        model.state_dim = state_dim
    elif model.state_dim and state_dim != model.state_dim:
        raise DatasetError(f"{first}: obs/state has {state_dim} values but model.state_dim is {model.state_dim}")


def action_semantics(config: TrainConfig, recorded: dict, dim: int) -> tuple[list[str], list]:
    """(names, hold) of the action dimensions: the recipe's `data.action_hold` if set, else what the data
    records; unknown holding counts as absolute (repeat the last command), with a warning."""
    names = list(recorded.get("names") or [])
    hold = config.data.action_hold if config.data.action_hold is not None else recorded.get("hold")
    if hold is None:
        warnings.warn("the data does not say what holding still means for its actions; assuming absolute targets "
                      "(a late policy repeats the last command). Set data.action_hold, e.g. [0, 0, 0, null] "
                      "for delta xyz and an absolute gripper", stacklevel=3)
        hold = [None] * dim
    if len(hold) != dim or (names and len(names) != dim):
        raise ConfigError(f"the action space has {dim} dimensions; got hold {hold} and names {names}")
    return names, list(hold)


def prepare(config: TrainConfig, out_dir: Path) -> Prepared:
    resolve_from_data(config)
    resume_from = latest_checkpoint(out_dir)
    if resume_from is not None:
        trainer_state = load_trainer_state(resume_from)
        # Through the dataclass, so that a key added since the checkpoint was written counts as its default.
        saved = to_dict(from_dict(ModelConfig, trainer_state["config"]["model"], "model."))
        current = to_dict(config.model)
        if len(config.model.image_keys) == 1:  # one camera, one ViT either way: its default changed once
            for model_config in (saved, current):
                del model_config["vision_per_camera"]
        changed = diff(saved, current)
        if changed:
            raise ConfigError(
                f"{out_dir} holds a checkpoint of a different model; refusing to resume. Changed: " + "; ".join(changed)
            )
    everything = load_episodes(config.data.paths, config.model.vision.image_size, config.model.image_keys,
                               config.data.frames)
    dims = {a.shape[1] for a in everything.actions}
    if dims != {config.model.action_dim}:
        raise DatasetError(f"episodes disagree on the action dimension: {sorted(dims)}")
    train_episodes, val_episodes = validation_split(len(everything.actions), config.data.val_episodes, config.seed)
    raw = everything.subset(train_episodes) if val_episodes else everything
    if resume_from is not None:
        norm_stats = json.loads((resume_from / "norm_stats.json").read_text())
    else:
        norm_stats = compute_norm_stats(raw)
    tokenizer_file = _text_tokenizer(config, raw.instructions, out_dir, resume_from)
    names, hold = action_semantics(config, raw.action_space, config.model.action_dim)
    meta = {"env_args": raw.env_args, "fps": raw.fps, "train_data": list(config.data.paths),
            "example_instruction": raw.instructions[0], "action_names": names, "action_hold": hold,
            "validation_episodes": len(val_episodes)}
    model = VLA.create(config.model, tokenizer_file, norm_stats, meta=meta)
    if resume_from is not None:
        load_weights(model, resume_from / WEIGHTS_FILE)
    encoder = observation_encoder(model)

    def dataset(part):
        return DemoDataset(part, encoder, model.action_tokenizer, config.model.chunk_size, aux_loss=config.model.aux_loss)

    return Prepared(model, dataset(raw), norm_stats, tokenizer_file, resume_from, raw.env_args,
                    dataset(everything.subset(val_episodes)) if val_episodes else None)


def _read_metrics(path: Path, up_to_step: int) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("step", 0) <= up_to_step]


def train(config: TrainConfig, out_dir: str | Path, progress: bool = True, stop_at_step: int | None = None,
          evaluate_fn=None) -> dict:
    """Train, checkpointing into `out_dir`; resumes if `out_dir` holds a checkpoint.

    `stop_at_step` ends the run early (after checkpointing), as an interruption would.
    `evaluate_fn(policy_dir, step) -> dict` runs simulation evaluation every `config.eval.every` steps.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    cuda = torch.cuda.is_available()
    precision = config.mixed_precision if config.mixed_precision != "auto" else ("bf16" if cuda else "no")
    accelerator = Accelerator(cpu=not cuda, mixed_precision=precision)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ConfigError("DeepSpeed is not supported by this loop: use FSDP (configs/accelerate/fsdp.yaml), "
                          "whose full and grad-op sharding are ZeRO-3 and ZeRO-2 in PyTorch itself")
    main = accelerator.is_main_process
    set_seed(config.seed)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    if config.model.backbone.quantization != "none" and accelerator.num_processes > 1:
        raise ConfigError("QLoRA (model.backbone.quantization) trains on one process: a 4-bit base cannot be "
                          "sharded or replicated by this loop; run it without torchrun/accelerate launch")
    prep = prepare(config, out_dir)
    model, dataset = prep.model, prep.dataset
    world, rank = accelerator.num_processes, accelerator.process_index
    if config.batch_size % (world * config.grad_accum):
        raise ConfigError(f"batch_size {config.batch_size} must divide by processes x grad_accum = {world * config.grad_accum}")
    if main:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

    optimizer = make_optimizer(model, config)
    schedule = lambda s: lr_factor(s, config.optim.warmup_steps, config.steps, config.optim.min_lr_ratio)  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    # The scheduler stays outside accelerate so it steps once per optimizer step, whatever the process count.
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped: VLA = accelerator.unwrap_model(model)
    if config.compile:
        unwrapped.compile()  # in place: parameter names, and so checkpoints, stay those of the plain module
    start_step = 0
    state = {}
    if prep.resume_from is not None:
        state = load_trainer_state(prep.resume_from)
        restore_optimizer(model, optimizer, state["optimizer"])  # after prepare: FSDP has sharded it
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_states(state["rng"])
        start_step = state["step"]

    metrics_path = out_dir / METRICS_FILE
    history = _read_metrics(metrics_path, start_step) if main else []
    # A resumed run's clock continues from its checkpoint, so that elapsed_s and train_wall_s count the whole
    # run's training (checkpoints written before train_s existed: the metrics logged at their step).
    earlier_seconds = state.get("train_s", next((r["elapsed_s"] for r in reversed(history) if "elapsed_s" in r), 0.0))
    if main:
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in history))
    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"))

    mine = torch.arange(config.batch_size)[rank::world]
    micro_batches = list(mine.chunk(config.grad_accum))
    workers = config.data.workers
    loader = torch.utils.data.DataLoader(StepBatches(dataset, config, micro_batches), batch_size=None,
                                         sampler=range(start_step, config.steps), num_workers=workers,
                                         prefetch_factor=2 if workers else None)
    validate = _validator(prep.val_dataset, config, mine, accelerator)
    bar = tqdm(total=config.steps, initial=start_step, desc="train", unit="step", disable=not (progress and main))
    window = {"loss": 0.0, "accuracy": 0.0, "n": 0}
    window_start = time.perf_counter()
    train_start = time.perf_counter()
    eval_seconds = 0.0  # simulation evaluation during training, reported apart

    def training_seconds() -> float:
        """The whole run's training time so far, earlier sessions included, evaluations apart."""
        return earlier_seconds + time.perf_counter() - train_start - eval_seconds

    samples_done = 0
    last = {}
    weights = None  # the last checkpoint's gathered weights: the final step always checkpoints
    model.train()
    for step, (indices, micro_list) in zip(range(start_step, config.steps), loader):
        for j, batch in enumerate(micro_list):
            batch = batch.to(accelerator.device)
            sync = contextlib.nullcontext() if j == len(micro_list) - 1 else accelerator.no_sync(model)
            with sync, accelerator.autocast():
                out = model(batch)
                accelerator.backward(out["loss"] / config.grad_accum)
            window["loss"] += out["loss"].item() / len(micro_batches)
            window["accuracy"] += out["accuracy"].item() / len(micro_batches)
        if config.optim.grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window["n"] += 1
        samples_done += config.batch_size
        done = step + 1

        if done % config.log_every == 0 or done == config.steps:
            elapsed = time.perf_counter() - window_start
            # Each process saw its share of the batch; the logged figures are the whole batch's.
            loss, accuracy = accelerator.reduce(
                torch.tensor([window["loss"], window["accuracy"]], device=accelerator.device) / window["n"], "mean"
            ).tolist()
            row = {
                "step": done,
                "loss": loss,
                "accuracy": accuracy,
                "l1": _decoded_l1(unwrapped, dataset, batch, out["predicted_ids"], indices[micro_batches[-1]]),
                "lr": scheduler.get_last_lr()[0],
                "samples_per_s": window["n"] * config.batch_size / max(elapsed, 1e-9),
                "elapsed_s": training_seconds(),
            }
            if validate is not None and (done % config.eval.val_every == 0 or done == config.steps):
                row.update(validate(model))
                model.train()
            last = row
            if main:
                _log(row, metrics_path, writer, bar)
            window = {"loss": 0.0, "accuracy": 0.0, "n": 0}
            window_start = time.perf_counter()
        bar.update(1)

        final = done == config.steps
        interrupted = stop_at_step is not None and done >= stop_at_step
        evaluating = bool(evaluate_fn and config.eval.every and (done % config.eval.every == 0 or final))
        if done % config.checkpoint_every == 0 or evaluating or final or interrupted:  # evaluations read a checkpoint
            weights, optimizer_state = gather_full_state(model, optimizer)
            if main:
                state = {
                    "step": done,
                    "optimizer": optimizer_state,
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_states(),
                    "config": to_dict(config),
                    "train_s": training_seconds(),
                }
                checkpoint = save_checkpoint(out_dir, done, unwrapped, weights, state, config.keep_checkpoints)
                if evaluating:
                    eval_start = time.perf_counter()
                    result = evaluate_fn(checkpoint, done)
                    eval_seconds += time.perf_counter() - eval_start
                    window_start += time.perf_counter() - eval_start  # the throughput window counts training only
                    _log({"step": done, **{f"eval_{k}": v for k, v in result.items()}}, metrics_path, writer, None)
                    model.train()
            accelerator.wait_for_everyone()
        if interrupted and not final:
            bar.close()
            return {"stopped_at": done}
    bar.close()
    wall = training_seconds()
    summary = {**last, "steps": config.steps, "resumed_from": start_step, "processes": world, "train_wall_s": wall,
               "eval_wall_s": eval_seconds, "mean_samples_per_s": samples_done / max(wall - earlier_seconds, 1e-9)}
    if weights is None:  # resumed a finished run: no step ran
        weights, _ = gather_full_state(model, optimizer)
    if main:
        unwrapped.eval()
        unwrapped.save_pretrained(out_dir / "policy", weights)
        (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
        writer.close()
    return summary


def _validator(val_dataset: DemoDataset | None, config: TrainConfig, mine: torch.Tensor, accelerator):
    """-> validate(model) -> {"val_loss", "val_accuracy"} over fixed batches of the held-out episodes
    (every process computes its share of each batch), or None without a validation split."""
    if val_dataset is None:
        return None
    order = SampleOrder(len(val_dataset), config.seed + 1)
    batches = [order.batch(i, config.batch_size)[mine] for i in range(config.eval.val_batches)]

    @torch.no_grad()
    def validate(model) -> dict:
        model.eval()
        totals = torch.zeros(2, device=accelerator.device)
        for indices in batches:
            with accelerator.autocast():
                out = model(val_dataset.batch(indices).to(accelerator.device))
            totals += torch.stack([out["loss"].float(), out["accuracy"].float()]) / len(batches)
        loss, accuracy = accelerator.reduce(totals, "mean").tolist()
        return {"val_loss": loss, "val_accuracy": accuracy}

    return validate


def _decoded_l1(model: VLA, dataset: DemoDataset, batch, predicted_ids: torch.Tensor, indices: torch.Tensor) -> float:
    """Mean absolute error of the decoded predicted actions against the demonstrated ones."""
    k, d = model.config.chunk_size, model.config.action_dim
    predicted = model.action_tokenizer.decode(predicted_ids.detach().cpu().numpy().reshape(-1, k, d))
    truth = dataset.chunk_actions[indices].numpy()
    valid = dataset.chunk_valid[indices].numpy()
    return float(np.abs(predicted - truth)[valid].mean())


def _log(row: dict, path: Path, writer, bar) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    for key, value in row.items():
        if key != "step" and isinstance(value, (int, float)):
            writer.add_scalar(key.replace("eval_", "eval/"), value, row["step"])
    if bar is not None:
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}", l1=f"{row['l1']:.3f}")
