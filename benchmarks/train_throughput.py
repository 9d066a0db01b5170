"""Training throughput of a preset on this CPU: samples per second, FLOPs per sample (counted by
torch.utils.flop_counter on one forward and backward), and the fraction of the CPU's arithmetic
peak reached, the peak measured as the best of large fp32 matrix products.

    python benchmarks/train_throughput.py [--preset tiny] [--image-size 64] [--batch 64] [--steps 20] [--compile]

With --compile, a second row times the same steps with the model under torch.compile (the recipe key
`compile: true`), after its compilation, which is timed apart.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from _common import observation, random_model  # noqa: E402


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=None, help="the preset's by default")
    parser.add_argument("--compile", action="store_true", help="also time the model under torch.compile")
    args = parser.parse_args()
    overrides = {"vision": {"image_size": args.image_size}} if args.image_size else {}
    model = random_model(args.preset, **overrides).train()
    k, d = model.config.chunk_size, model.config.action_dim
    batch = model.prepare([observation(model, i) for i in range(args.batch)])
    rng = np.random.default_rng(0)
    batch.action_ids = torch.from_numpy(model.action_tokenizer.encode(rng.uniform(-1, 1, (args.batch, k, d))).reshape(args.batch, -1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(forward):
        optimizer.zero_grad(set_to_none=True)
        forward(batch)["loss"].backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        model(batch)["loss"].backward()
    flops_per_sample = counter.get_total_flops() / args.batch
    peak = matmul_peak_gflops()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{'preset':8s} {'image':>6s} {'mode':>9s} {'params M':>9s} {'batch':>6s} {'samples/s':>10s} {'GFLOP/sample':>13s} "
          f"{'GFLOP/s':>9s} {'matmul peak GFLOP/s':>20s} {'of peak':>8s} {'compile s':>10s}")
    modes = [("eager", model)] + ([("compiled", torch.compile(model))] if args.compile else [])
    for mode, forward in modes:
        start = time.perf_counter()
        step(forward)  # the first step: warm-up, or compilation
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.steps):
            step(forward)
        elapsed = time.perf_counter() - start
        samples_per_s = args.steps * args.batch / elapsed
        achieved = samples_per_s * flops_per_sample / 1e9
        print(f"{args.preset:8s} {model.image_size:6d} {mode:>9s} {params:9.2f} {args.batch:6d} {samples_per_s:10.1f} "
              f"{flops_per_sample / 1e9:13.3f} {achieved:9.1f} {peak:20.1f} {achieved / peak:8.1%} "
              f"{first if mode == 'compiled' else 0:10.0f}")
    print(f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
