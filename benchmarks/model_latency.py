"""Parameters and batch-1 decision latency of the model presets on this machine: PyTorch eager and
onnxruntime, parallel decoding of a chunk against autoregressive decoding of the same chunk and
against OpenVLA's setting (autoregressive, one action per decision).

    python benchmarks/model_latency.py [--presets tiny small] [--iters 100]

Random weights (latency does not depend on their values). The three configurations of a preset are
saved as checkpoints, exported, and timed together in interleaved rounds (`vla.bench.bench_checkpoints`),
so a slow spell of the machine does not land on one of them only. Prints a table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import random_model  # noqa: E402

from vla.bench import bench_checkpoints  # noqa: E402


def configurations(chunk: int) -> list[tuple[str, int, str]]:
    return [("parallel", chunk, f"parallel, K={chunk}"),
            ("autoregressive", chunk, f"autoregressive, K={chunk}"),
            ("autoregressive", 1, "autoregressive, K=1 (OpenVLA)")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--iters", type=int, default=100)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch 1; p50 over {args.iters} calls")
    header = (f"{'preset':7s} {'params M':>9s} {'decoding':30s} {'runtime':12s} {'device':10s} {'p50 ms':>8s} "
              f"{'p99 ms':>8s} {'ms/action':>10s}")
    table = [header, "-" * len(header)]
    for preset in args.presets:
        chunk = random_model(preset).config.chunk_size
        per_action = {}
        with tempfile.TemporaryDirectory() as tmp:
            label_of, params = {}, {}
            for i, (decoding, k, label) in enumerate(configurations(chunk)):
                model = random_model(preset, decoding=decoding, chunk_size=k)
                params[label] = sum(p.numel() for p in model.parameters()) / 1e6
                label_of[str(model.save_pretrained(Path(tmp) / f"checkpoint-{i}"))] = label
            # One call for the three, so that their calls are timed in interleaved rounds.
            rows = bench_checkpoints(list(label_of), iters=args.iters, warmup=10, progress=False)
        for r in rows:
            label = label_of[r["checkpoint"]]
            per_action[(label, r["runtime"], r["device"])] = r["per_action_ms"]
            table.append(f"{preset:7s} {params[label]:9.2f} {label:30s} {r['runtime']:12s} {r['device']:10s} "
                         f"{r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['per_action_ms']:10.3f}")
            print(table[-1], flush=True)
        for runtime in ("torch", "onnxruntime"):
            fast = per_action.get((f"parallel, K={chunk}", runtime, "cpu"))
            for label in (f"autoregressive, K={chunk}", "autoregressive, K=1 (OpenVLA)"):
                slow = per_action.get((label, runtime, "cpu"))
                if fast and slow:
                    table.append(f"{preset:7s} {'':9s} {'parallel vs ' + label:30s} {runtime:12s} {'cpu':10s} "
                                 f"{'':8s} {'':8s} {slow / fast:9.1f}x")
    print("\n" + "\n".join(table))


if __name__ == "__main__":
    main()
