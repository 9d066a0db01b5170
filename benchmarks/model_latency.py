"""Parameters and batch-1 decision latency of the model presets, PyTorch eager on this machine's CPU.

    python benchmarks/model_latency.py [--presets tiny small] [--iters 20]

Random weights (latency does not depend on their values). Prints a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import observation, random_model  # noqa: E402

from vla.bench import time_calls  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'preset':8s} {'decoding':15s} {'params (M)':>11s} {'image tokens':>13s} {'chunk':>6s} {'p50 ms':>9s} {'p99 ms':>9s} {'ms/action':>10s}")
    for preset in args.presets:
        for decoding in ("parallel", "autoregressive"):
            model = random_model(preset, decoding=decoding)
            params = sum(p.numel() for p in model.parameters()) / 1e6
            obs = observation(model)
            with torch.inference_mode():
                ms = time_calls(lambda: model.predict_action(obs), warmup=3, iters=args.iters)
            p50, p99 = np.percentile(ms, 50), np.percentile(ms, 99)
            k = model.config.chunk_size
            print(f"{preset:8s} {decoding:15s} {params:11.2f} {model.num_image_tokens:13d} {k:6d} {p50:9.1f} {p99:9.1f} {p50 / k:10.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
