"""Training throughput of a preset on this CPU: samples per second, FLOPs per sample (counted by
torch.utils.flop_counter on one forward and backward), and the fraction of the CPU's arithmetic
peak reached, the peak measured as the best of large fp32 matrix products.

    python benchmarks/train_throughput.py [--preset tiny] [--batch 64] [--steps 20]
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
    args = parser.parse_args()
    model = random_model(args.preset).train()
    k, d = model.config.chunk_size, model.config.action_dim
    batch = model.prepare([observation(model, i) for i in range(args.batch)])
    rng = np.random.default_rng(0)
    batch.action_ids = torch.from_numpy(model.action_tokenizer.encode(rng.uniform(-1, 1, (args.batch, k, d))).reshape(args.batch, -1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(batch)["loss"].backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        model(batch)["loss"].backward()
    flops_per_sample = counter.get_total_flops() / args.batch
    step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = time.perf_counter() - start
    samples_per_s = args.steps * args.batch / elapsed
    achieved = samples_per_s * flops_per_sample / 1e9
    peak = matmul_peak_gflops()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{'preset':8s} {'params M':>9s} {'batch':>6s} {'samples/s':>10s} {'GFLOP/sample':>13s} {'GFLOP/s':>9s} {'matmul peak GFLOP/s':>20s} {'of peak':>8s}")
    print(f"{args.preset:8s} {params:9.2f} {args.batch:6d} {samples_per_s:10.1f} {flops_per_sample / 1e9:13.3f} {achieved:9.1f} "
          f"{peak:20.1f} {achieved / peak:8.1%}")
    print(f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
