"""The llama-3.2-1b preset at its real size, with random weights built here: parameters, LoRA's share,
the memory of a training step and forward latency on this CPU, and the GPU memory of a batch of 8.

    python benchmarks/llama_1b.py [--steps 2] [--iters 3]

The backbone is Llama-3.2-1B's published configuration (hidden 2048, 16 layers, 32 heads, 8 KV heads,
intermediate 8192, vocabulary 128,256, tied head), the vision tower timm's vit_base_patch16_siglip_224 at
224 px, as the preset sets them. Each figure is labelled measured (on this CPU) or computed (from the
parameter counts and the measured activations).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pretrained_fixtures import LLAMA_32_1B_CONFIG, llama3_tokenizer  # noqa: E402

GB = 1024**3


def build(batch: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from policies.actions import action_statistics
    from vla.model.config import load_model_config
    from vla.model.vla import VLA

    torch.manual_seed(0)
    tokenizer = llama3_tokenizer()
    tmp = Path(tempfile.mkdtemp())
    tokenizer.save(str(tmp / "tokenizer.json"))
    config = load_model_config("llama-3.2-1b", {"vision": {"pretrained": None}, "backbone": {"pretrained": None}})
    llama_config = LlamaConfig.from_dict({**LLAMA_32_1B_CONFIG, "bos_token_id": tokenizer.token_to_id("<|begin_of_text|>")})
    llama = LlamaForCausalLM(llama_config)
    rng = np.random.default_rng(0)
    stats = {"action": action_statistics(rng.uniform(-1, 1, (1000, 7))), "state": action_statistics(rng.normal(size=(1000, 8)))}
    model = VLA(config, tmp / "tokenizer.json", stats, llama=llama).train()
    return model


def batch_of(model, size: int):
    from vla.model.vla import Batch

    s, length = model.image_size, 24
    images = {key: torch.randint(0, 256, (size, s, s, 3), dtype=torch.uint8) for key in model.image_keys}
    ids = torch.randint(0, 1000, (size, length))
    mask = torch.ones(size, length, dtype=torch.long)
    state = torch.randn(size, model.config.state_dim)
    actions = torch.randint(model.vocab_size - model.config.n_bins, model.vocab_size, (size, model.config.action_tokens))
    return Batch(images, ids, mask, state, action_ids=actions)


class SavedBytes:
    """Counts the bytes autograd keeps for the backward pass (the activations) while active. A linear layer
    saves its weight too (for the input's gradient); the weights are counted apart, so those tensors, and
    views of them, are skipped."""

    def __init__(self, model: torch.nn.Module):
        self.weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.total = 0

    def __enter__(self):
        seen = set()

        def pack(tensor):
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key not in self.weights and key not in seen:
                seen.add(key)
                self.total += storage.nbytes()
            return tensor

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model = build(1)
    params = {name: sum(p.numel() for p in module.parameters()) for name, module in
              (("backbone (Llama 3.2 1B, action rows added)", model.llama), ("vision (SigLIP B/16)", model.vision))}
    total = sum(p.numel() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    linear = sum(m.weight.numel() for n, m in model._llama_base().named_modules()
                 if isinstance(m, torch.nn.Linear) and "lm_head" not in n and "lora" not in n)
    embedding = model._llama_base().get_input_embeddings().weight.numel()

    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    batch = batch_of(model, 1)
    times = []
    activations_fp32 = 0
    for _ in range(args.steps):
        started = time.perf_counter()
        with SavedBytes(model) as saved:
            loss = model(batch)["loss"]
        activations_fp32 = saved.total
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    step_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start_rss
    model.eval()
    with torch.no_grad():
        latencies = []
        for _ in range(args.iters):
            started = time.perf_counter()
            model.predict_action_ids(batch_of(model, 1))
            latencies.append(time.perf_counter() - started)
    # A batch-8 backward of the 1B model in bf16 ran for over 20 minutes on this CPU without finishing; the
    # activations are measured in fp32 at batch 1 and scaled: x 8 for the batch, / 2 for a base held in bf16
    # (fp32 master weights under autocast would keep some saved tensors, the residual stream's, in fp32).
    activations_bf16 = activations_fp32 * 8 / 2

    rows = [
        ("parameters", f"{total / 1e9:.3f} B", "measured"),
        *((f"  {name}", f"{n / 1e6:.0f} M", "measured") for name, n in params.items()),
        ("trainable with LoRA r=32 (adapters, action-token rows, vision, projector)",
         f"{n_trainable / 1e6:.0f} M ({100 * n_trainable / total:.1f}%)", "measured"),
        ("CPU fp32 training step, batch 1: peak resident memory", f"{step_peak / GB:.1f} GB", "measured"),
        ("CPU fp32 training step, batch 1: time", f"{np.median(times):.1f} s", "measured"),
        ("CPU fp32 forward (parallel decoding of 8 x 7 tokens), batch 1", f"{1000 * np.median(latencies):.0f} ms",
         "measured"),
        ("activations kept for backward, batch 1, fp32", f"{activations_fp32 / GB:.2f} GB", "measured (saved tensors)"),
        ("activations kept for backward, batch 8, bf16", f"{activations_bf16 / GB:.1f} GB",
         "computed (batch-1 fp32 x 8 / 2)"),
    ]
    optimizer_bytes = n_trainable * (4 + 4 + 8)  # fp32 master weight, gradient, Adam's two moments
    frozen = total - n_trainable
    bf16_total = frozen * 2 + optimizer_bytes + activations_bf16
    nf4_frozen = linear * (0.5 + 0.127 / 8) + (frozen - linear) * 2  # NF4 + double-quantized scales; rest bf16
    nf4_total = nf4_frozen + optimizer_bytes + activations_bf16
    rows += [
        ("GPU, batch 8, bf16 base + LoRA: weights + optimizer + activations",
         f"{frozen * 2 / GB:.1f} + {optimizer_bytes / GB:.1f} + {activations_bf16 / GB:.1f} = {bf16_total / GB:.1f} GB",
         "computed"),
        ("GPU, batch 8, 4-bit NF4 base (QLoRA) + LoRA: weights + optimizer + activations",
         f"{nf4_frozen / GB:.1f} + {optimizer_bytes / GB:.1f} + {activations_bf16 / GB:.1f} = {nf4_total / GB:.1f} GB",
         "computed"),
    ]
    print(f"llama-3.2-1b preset, random weights; linear weights in the backbone {linear / 1e9:.2f} B, "
          f"embedding (tied head) {embedding / 1e6:.0f} M\n")
    print("| figure | value | how |")
    print("|---|---|---|")
    for name, value, how in rows:
        print(f"| {name} | {value} | {how} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
