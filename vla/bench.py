"""`vla bench`: decision latency of PyTorch eager against onnxruntime, parallel against autoregressive,
all timed in interleaved rounds (`time_interleaved`).

The checkpoint's own decoding is measured with its weights. The other decoding is measured on the
same architecture with random weights: latency does not depend on the weights' values, only on
the shapes, and a model trained for one decoding cannot decode the other way.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vla.training.checkpoints import resolve_policy_dir


def _observation(image_size: int, prompt: str, state_dim: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    obs = {"image": rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8), "prompt": prompt}
    if state_dim:
        obs["state"] = rng.normal(size=state_dim).astype(np.float32)
    return obs


def time_calls(fn, warmup: int, iters: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(iters)
    for i in range(iters):
        start = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - start
    return out * 1000


def time_interleaved(fns: list, warmup: int, iters: int, rounds: int = 5) -> list[np.ndarray]:
    """Milliseconds per call of each function, `iters` calls each, taken in `rounds` interleaved
    rounds: a shared machine's slow spells then fall on every function alike, which keeps the
    ratios between them (parallel against autoregressive, onnxruntime against PyTorch) honest.
    Each round starts with `warmup` calls that are not counted: just after a switch, the other
    runtimes' thread pools are still spinning, which a control loop with one policy never sees."""
    rounds = max(1, min(rounds, iters))
    per_round = [iters // rounds + (r < iters % rounds) for r in range(rounds)]
    times = [[] for _ in fns]
    for n in per_round:
        for fn, out in zip(fns, times):
            out.append(time_calls(fn, warmup, n))
    return [np.concatenate(t) for t in times]


def _row(runtime: str, device: str, decoding: str, ms: np.ndarray, chunk: int, batch: int) -> dict:
    p50 = float(np.percentile(ms, 50))
    return {"runtime": runtime, "device": device, "decoding": decoding, "batch": batch, "p50_ms": p50,
            "p99_ms": float(np.percentile(ms, 99)), "per_action_ms": p50 / (chunk * batch),
            "decisions_per_s": 1000.0 * batch / p50}


def _sibling_checkpoint(model, decoding: str, directory: Path) -> Path:
    """The same architecture with the other decoding (random weights), saved as a checkpoint."""
    from vla.model.vla import VLA

    config = type(model.config)(**{**model.config.__dict__, "decoding": decoding,
                                   "prefix_actions": model.config.prefix_actions if decoding == "parallel" else 0})
    torch.manual_seed(0)
    sibling = VLA(config, model.text_tokenizer_file, model.norm_stats, meta=model.meta).eval()
    return sibling.save_pretrained(directory / f"checkpoint-{decoding}")


def _source_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory; for an export, the checkpoint it was exported from."""
    resolved = resolve_policy_dir(path)
    if (resolved / "policy.json").exists():
        source = json.loads((resolved / "policy.json").read_text()).get("source")
        if not source or not Path(source).exists():
            raise FileNotFoundError(f"{resolved}: the PyTorch checkpoint it was exported from ({source}) is gone")
        resolved = Path(source)
    return resolved


def bench(path: str | Path, iters: int = 50, warmup: int = 5, batch: int = 1, decodings=("parallel", "autoregressive"),
          prompt: str | None = None, progress: bool = True) -> list[dict]:
    """A checkpoint (or the checkpoint behind an export) in each decoding: the other decoding is
    measured on the same architecture with random weights."""
    from vla.model.vla import VLA

    resolved = _source_checkpoint(path)
    model = VLA.from_pretrained(resolved)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = [resolved if decoding == model.config.decoding else _sibling_checkpoint(model, decoding, Path(tmp))
                       for decoding in decodings]
        return bench_checkpoints(checkpoints, iters, warmup, batch, prompt or _training_prompt(model), progress)


def bench_checkpoints(checkpoints: list[Path], iters: int = 50, warmup: int = 5, batch: int = 1,
                      prompt: str | None = None, progress: bool = True) -> list[dict]:
    """Export each checkpoint, then time PyTorch eager and onnxruntime on every device present,
    all of them in interleaved rounds; one row per (checkpoint, runtime, device), which it names."""
    from policies.onnx_policy import OnnxPolicy, _cuda_device_count
    from vla.export import export
    from vla.model.vla import VLA

    cuda = torch.cuda.is_available() and _cuda_device_count() > 0
    labels, fns = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, checkpoint in enumerate(checkpoints):
            exported = Path(tmp) / f"onnx-{i}"
            export(checkpoint, exported, parity_inputs=4)
            torch_model = VLA.from_pretrained(checkpoint, device="cuda" if cuda else "cpu")
            config = torch_model.config
            text = prompt or _training_prompt(torch_model)
            obs = [_observation(torch_model.image_size, text, config.state_dim, j) for j in range(batch)]
            shape = (config.decoding, config.chunk_size)
            labels.append((checkpoint, "torch", "cuda" if cuda else "cpu", *shape))
            fns.append(lambda m=torch_model, o=obs: m.predict_action(o))
            if cuda:  # and on the CPU as well
                cpu_model = VLA.from_pretrained(checkpoint)
                labels.append((checkpoint, "torch", "cpu", *shape))
                fns.append(lambda m=cpu_model, o=obs: m.predict_action(o))
            onnx_devices = [("cpu", False)] + ([("cuda", False), ("cuda", True)] if cuda else [])
            for device, graphs in onnx_devices:
                if graphs and not (batch == 1 and config.decoding == "parallel"):
                    continue  # CUDA graphs only apply to the parallel graph at batch 1
                policy = OnnxPolicy(exported, device=device, cuda_graphs=graphs, verbose=False)
                labels.append((checkpoint, "onnxruntime", device + ("+cudagraph" if graphs else ""), *shape))
                fns.append(lambda p=policy, o=obs: p.act_batch(o))
            if progress:
                print(f"  exported {checkpoint} ({config.decoding}, K={config.chunk_size})", flush=True)
        times = time_interleaved(fns, warmup, iters)
    rows = []
    for (checkpoint, runtime, device, decoding, chunk), ms in zip(labels, times):
        rows.append({**_row(runtime, device, decoding, ms, chunk, batch), "checkpoint": str(checkpoint)})
        _say(progress, rows[-1])
    return rows


def _training_prompt(model) -> str:
    """An instruction of the training data (checkpoints written before it was recorded: a plausible one)."""
    return model.meta.get("example_instruction", "reach the red cube")


def _say(progress: bool, row: dict) -> None:
    if progress:
        print(f"  {row['runtime']:12s} {row['device']:15s} {row['decoding']:15s} p50 {row['p50_ms']:8.2f} ms", flush=True)


def format_table(rows: list[dict]) -> str:
    header = f"{'runtime':12s} {'device':15s} {'decoding':15s} {'batch':>5s} {'p50 ms':>9s} {'p99 ms':>9s} {'ms/action':>10s} {'decisions/s':>12s}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['runtime']:12s} {r['device']:15s} {r['decoding']:15s} {r['batch']:5d} {r['p50_ms']:9.2f} "
                     f"{r['p99_ms']:9.2f} {r['per_action_ms']:10.3f} {r['decisions_per_s']:12.1f}")
    return "\n".join(lines)
