"""Sharded training on the CPU, run by tests/test_training.py under torchrun (2 processes, gloo).

accelerate only runs FSDP on GPUs, so this drives accelerate's own FSDP2 wrapping
(`fsdp2_prepare_model`, with the settings that configs/accelerate/fsdp.yaml puts in the
environment) and the checkpoint helpers the training loop uses:

1. an unsharded reference takes every step on the whole batch; the sharded model takes the same
   steps, each process on its half;
2. after 3 steps, the sharded state is gathered, saved as a training checkpoint, and restored into
   a freshly sharded copy; both continue for 2 steps.

argv: OUT_DIR. Rank 0 writes OUT_DIR/result.json (losses and the largest weight differences) and
the checkpoint under OUT_DIR/run/checkpoints/.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_model
from torch.distributed.fsdp import FSDPModule

from helpers import make_model, observation
from vla.model.checkpoint import head_is_tied, load_weights
from vla.training.checkpoints import gather_full_state, restore_optimizer, save_checkpoint

BATCH = 8
TIED = {"tie_embeddings": True}


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """What `accelerator.prepare` does to the model under FSDP2, minus the GPU."""
    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables accelerate's launcher sets
    stand_in = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=None,
                               parallelism_config=None, mixed_precision="no", device=torch.device("cpu"),
                               is_main_process=dist.get_rank() == 0)
    return fsdp2_prepare_model(stand_in, model)


def batches(model, steps: int):
    """The same global batches on every process."""
    rng = np.random.default_rng(0)
    k, d = model.config.chunk_size, model.config.action_dim
    for step in range(steps):
        batch = model.prepare([observation(seed=step * BATCH + i) for i in range(BATCH)])
        actions = rng.uniform(-1, 1, (BATCH, k, d))
        batch.action_ids = torch.from_numpy(model.action_tokenizer.encode(actions).reshape(BATCH, -1))
        yield batch


def my_half(batch):
    rank, world = dist.get_rank(), dist.get_world_size()
    return batch.select(slice(rank, None, world))


def train_steps(model, optimizer, steps, split: bool) -> list[float]:
    losses = []
    for batch in steps:
        loss = model(my_half(batch) if split else batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        total = loss.detach().clone()
        if split:
            dist.all_reduce(total)
            total /= dist.get_world_size()
        losses.append(total.item())
    return losses


def make_optimizer(model: torch.nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)


def max_difference(a: dict, b: dict) -> tuple[float, str]:
    """(largest absolute difference, the tensor it is in)."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max(((a[k].float() - b[k].float()).abs().max().item(), k) for k in a)


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    workdir = out / f"rank{rank}"
    workdir.mkdir(parents=True, exist_ok=True)
    # FiLM on: its input norm all-reduces the batch statistics, so a split batch normalizes as the whole
    # one does. A tied head (Llama 3.2's) in the root unit.
    reference = make_model(workdir, seed=0, film=True, backbone=TIED).train()
    assert head_is_tied(reference)
    sharded = shard(copy.deepcopy(reference))
    assert isinstance(sharded, FSDPModule) and any(isinstance(m, FSDPModule) for m in sharded.llama.modules()
                                                   if m is not sharded)
    ref_opt, opt = make_optimizer(reference), make_optimizer(sharded)
    all_batches = list(batches(reference, 5))

    reference_losses = train_steps(reference, ref_opt, all_batches[:3], split=False)
    sharded_losses = train_steps(sharded, opt, all_batches[:3], split=True)

    weights, optimizer_state = gather_full_state(sharded, opt)
    checkpoint = out / "run" / "checkpoints" / "step_000003"
    if rank == 0:
        save_checkpoint(out / "run", 3, reference, weights, {"step": 3, "optimizer": optimizer_state}, keep=2)
    dist.barrier()

    # Resume: a fresh model from the checkpoint's weights, sharded, its optimizer restored.
    stored = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    restored_model = make_model(workdir, seed=1, film=True, backbone=TIED).train()
    load_weights(restored_model, checkpoint / "model.safetensors")
    assert head_is_tied(restored_model)
    restored = shard(restored_model)
    restored_opt = make_optimizer(restored)
    restore_optimizer(restored, restored_opt, stored["optimizer"])

    reference_losses += train_steps(reference, ref_opt, all_batches[3:], split=False)
    continued = train_steps(sharded, opt, all_batches[3:], split=True)
    resumed = train_steps(restored, restored_opt, all_batches[3:], split=True)
    final_sharded, _ = gather_full_state(sharded, opt)
    final_restored, _ = gather_full_state(restored, restored_opt)
    if rank == 0:
        result = {
            "reference_losses": reference_losses,
            "sharded_losses": sharded_losses + continued,
            "resumed_losses": resumed,
            "sharded_vs_reference": max_difference(final_sharded, reference.state_dict()),
            "resumed_vs_sharded": max_difference(final_restored, final_sharded),
            "gathered_keys_match_plain_model": sorted(weights) == sorted(reference.state_dict()),
        }
        (out / "result.json").write_text(json.dumps(result, indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
