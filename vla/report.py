"""The demo's report: summary.json, report.md and report.html with plots, GIFs and tables."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np


def _load(path: Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.exists() else None


def training_curve(metrics_file: Path, out: Path) -> Path | None:
    if not metrics_file.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, title in zip(axes, ("loss", "accuracy", "l1"),
                              ("training loss (actions + auxiliary)", "action-token accuracy", "L1 of decoded actions")):
        ax.plot(steps, [r[key] for r in rows])
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def episode_gif(policy, env_id: str, env_kwargs: dict, seed: int, out: Path, fps: int = 6) -> Path:
    """Replay one evaluation episode (deterministic for its seed) and save it as a GIF."""
    import gymnasium as gym
    from PIL import Image

    import sims  # noqa: F401  (registers the environments)

    from policies.chunking import ChunkExecutor

    env = gym.make(env_id, render_mode="rgb_array", **{**env_kwargs, "render_size": 256})
    obs, info = env.reset(seed=seed)
    executor = ChunkExecutor("receding")
    frames = [env.render()]
    done, step = False, 0
    while not done:
        if executor.needs_chunk(step):
            executor.add_chunk(policy.act({**obs, "prompt": info["instruction"]}), observed_at=step)
        obs, _, terminated, truncated, info = env.step(executor.action(step))
        frames.append(env.render())
        done, step = terminated or truncated, step + 1
    env.close()
    images = [Image.fromarray(f) for f in frames]
    images[0].save(out, save_all=True, append_images=images[1:] + [images[-1]] * fps, duration=int(1000 / fps), loop=0)
    return out


FAILURE_SEARCH_EPISODES = 100


def scene_novelty(env_id: str, env_kwargs: dict, demo_seeds: list[int], eval_seeds: list[int]) -> dict:
    """How far each evaluation scene is from the closest demonstrated one.

    Two scenes' distance is the largest displacement of any cube between them (cubes matched by colour,
    a cube missing from one of them counts as infinitely far); each evaluation seed's novelty is its
    distance to the nearest demonstration. Layouts are recomputed from the seeds, nothing is rendered.
    """
    import gymnasium as gym

    import sims  # noqa: F401  (registers the environments)

    env = gym.make(env_id, **{k: v for k, v in env_kwargs.items() if k not in ("render_mode", "render_size")}).unwrapped
    colors = list(env.colors)

    def positions(seeds) -> np.ndarray:
        rows = []
        for seed in seeds:
            layout = env.layout_of_seed(int(seed))
            rows.append([layout.object_xy.get(c, np.full(2, np.inf)) for c in colors])
        return np.asarray(rows, np.float64)  # [N, C, 2]

    demos, evals = positions(sorted(set(demo_seeds))), positions(eval_seeds)
    env.close()
    nearest = []
    for scene in evals:
        gaps = np.linalg.norm(demos - scene[None], axis=-1)  # [N, C]
        gaps = np.where(np.isnan(gaps), 0.0, gaps)  # a cube absent from both scenes
        nearest.append(float(gaps.max(axis=1).min()))
    nearest = np.asarray(nearest)
    overlap = sorted(set(demo_seeds) & set(eval_seeds))
    return {"demonstrated_scenes": len(demos), "evaluated_scenes": len(evals), "shared_seeds": len(overlap),
            "nearest_demo_cm_median": 100 * float(np.median(nearest)),
            "nearest_demo_cm_min": 100 * float(nearest.min()), "nearest_demo_cm_max": 100 * float(nearest.max())}


def demo_seeds(path: Path) -> list[int]:
    from vla.data.store import EpisodeReader

    with EpisodeReader(path) as reader:
        return [int(reader.attrs(i).get("seed", -1)) for i in range(len(reader))]


def _first_failure_beyond(policy, task: str, env_kwargs: dict, first_seed: int) -> dict | None:
    """When every evaluated episode succeeded, look for a failure to show on the next seeds."""
    from vla.evaluation import evaluate

    result = evaluate(policy, task, FAILURE_SEARCH_EPISODES, seed=first_seed, env_kwargs=env_kwargs, videos=0,
                      progress=False)
    return next((e for e in result["episodes"] if not e["success"]), None)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def write_report(out: Path, task: str, env_kwargs: dict, stage_log: dict, total_wall_s: float,
                 collection: dict | None = None) -> dict:
    out = Path(out)
    torch_eval = _load(out / "eval_torch" / "eval.json") or {}
    deploy = _load(out / "deploy" / "deploy.json") or {}
    bench = _load(out / "bench.json") or []
    train_summary = _load(out / "train" / "train_summary.json") or {}
    export_meta = _load(out / "export" / "policy.json") or {}
    curve = training_curve(out / "train" / "metrics.jsonl", out / "training_curve.png")

    gifs = {}
    episodes = torch_eval.get("episodes", [])
    if episodes:
        from vla.policy import TorchPolicy

        policy = TorchPolicy(out / "train" / "policy")
        for kind, wanted in (("success", True), ("failure", False)):
            match = next((e for e in episodes if e["success"] == wanted), None)
            note = ""
            if match is None and not wanted:
                match = _first_failure_beyond(policy, task, env_kwargs, first_seed=max(e["seed"] for e in episodes) + 1)
                note = (f"none among the {len(episodes)} evaluated episodes; the first one on the following "
                        f"{FAILURE_SEARCH_EPISODES} seeds" if match else
                        f"none among the {len(episodes)} evaluated episodes nor on the following "
                        f"{FAILURE_SEARCH_EPISODES} seeds")
            if match is not None:
                gifs[kind] = {"file": f"episode_{kind}.gif", "instruction": match["instruction"], "seed": match["seed"]}
                episode_gif(policy, task, env_kwargs, match["seed"], out / gifs[kind]["file"])
            if note:
                gifs.setdefault(kind, {})["note"] = note

    scenes = None
    eval_seeds = [e["seed"] for result in (torch_eval, deploy) for e in result.get("episodes", [])]
    if (out / "data" / "demos.hdf5").exists() and eval_seeds:
        scenes = scene_novelty(task, env_kwargs, demo_seeds(out / "data" / "demos.hdf5"), eval_seeds)
        scenes["torch_seeds"] = _seed_range(torch_eval)
        scenes["onnx_seeds"] = _seed_range(deploy)

    summary = {
        "task": task,
        "env_kwargs": env_kwargs,
        "scenes": scenes,
        "success_rate_torch": torch_eval.get("success_rate"),
        "ci95_torch": torch_eval.get("ci95"),
        "success_rate_onnx": deploy.get("success_rate"),
        "ci95_onnx": deploy.get("ci95"),
        "eval_episodes_torch": torch_eval.get("num_episodes"),
        "eval_episodes_onnx": deploy.get("num_episodes"),
        "per_target_torch": {k: v["success_rate"] for k, v in torch_eval.get("per_target", {}).items()},
        "per_target_onnx": {k: v["success_rate"] for k, v in deploy.get("per_target", {}).items()},
        "train_steps": train_summary.get("steps"),
        "train_wall_s": train_summary.get("train_wall_s"),
        "train_samples_per_s": train_summary.get("mean_samples_per_s"),
        "final_loss": train_summary.get("loss"),
        "final_token_accuracy": train_summary.get("accuracy"),
        "control_loop": {k: deploy.get(k) for k in ("rate_hz", "step_p50_ms", "step_p99_ms", "policy_p50_ms",
                                                    "policy_p99_ms", "missed_deadlines", "safe_stops")},
        "parity": export_meta.get("parity"),
        "latency": bench,
        "stage_wall_s": {k: round(v["wall_s"], 1) for k, v in stage_log.items()},
        "total_wall_s": total_wall_s,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    import yaml

    configs = {}
    if collection:
        configs["demonstrations"] = yaml.safe_dump({"task": task, "env_kwargs": env_kwargs, **collection}, sort_keys=False)
    if (out / "train" / "config.yaml").exists():
        configs["training (resolved, model included)"] = (out / "train" / "config.yaml").read_text()
    (out / "report.md").write_text(_markdown(summary, torch_eval, deploy, bench, curve, gifs, configs))
    (out / "report.html").write_text(_html(summary, torch_eval, deploy, bench, curve, gifs, configs))
    return summary


def _seed_range(result: dict) -> list[int] | None:
    seeds = [e["seed"] for e in result.get("episodes", [])]
    return [min(seeds), max(seeds)] if seeds else None


def _scenes_text(scenes: dict | None) -> str:
    if not scenes:
        return ""
    def seeds(pair):
        return f"{pair[0]}-{pair[1]}" if pair else "none"

    return (f"Demonstrations cover {scenes['demonstrated_scenes']} scenes. The PyTorch evaluation runs seeds "
            f"{seeds(scenes['torch_seeds'])}, the control loop seeds {seeds(scenes['onnx_seeds'])}: "
            f"{scenes['evaluated_scenes']} scenes, {scenes['shared_seeds']} of them demonstrated. Measured as the largest "
            f"displacement of any cube, each evaluation scene is {scenes['nearest_demo_cm_median']:.1f} cm (median; "
            f"{scenes['nearest_demo_cm_min']:.1f} to {scenes['nearest_demo_cm_max']:.1f} cm) from the closest "
            f"demonstrated scene.")


def _rows_success(torch_eval: dict, deploy: dict) -> list[list[str]]:
    rows = []
    for name, result in (("PyTorch checkpoint (vla eval)", torch_eval), ("ONNX in the control loop (vla deploy)", deploy)):
        if result:
            low, high = result["ci95"]
            rows.append([name, f"{result['successes']}/{result['num_episodes']}", _pct(result["success_rate"]),
                         f"{_pct(low)} - {_pct(high)}"])
    return rows


def _rows_targets(torch_eval: dict, deploy: dict) -> list[list[str]]:
    targets = sorted(set(torch_eval.get("per_target", {})) | set(deploy.get("per_target", {})))
    rows = []
    for t in targets:
        a = torch_eval.get("per_target", {}).get(t)
        b = deploy.get("per_target", {}).get(t)
        rows.append([t] + [f"{r['successes']}/{r['episodes']} ({_pct(r['success_rate'])})" if r else "-" for r in (a, b)])
    return rows


def _rows_latency(bench: list[dict]) -> list[list[str]]:
    return [[r["runtime"], r["device"], r["decoding"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
             f"{r['per_action_ms']:.3f}"] for r in bench]


def _rows_stages(summary: dict) -> list[list[str]]:
    rows = [[k, f"{v:.1f}"] for k, v in summary["stage_wall_s"].items()]
    return rows + [["total", f"{summary['total_wall_s']:.1f}"]]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _markdown(summary, torch_eval, deploy, bench, curve, gifs, configs) -> str:
    loop = summary["control_loop"]
    parts = [
        f"# VLA demo: {summary['task']}",
        f"Environment settings: `{json.dumps(summary['env_kwargs'])}`. Total wall time {summary['total_wall_s']:.0f} s.",
        "## Success in simulation (held-out seeds)",
        _md_table(["policy", "successes", "rate", "95% CI (Wilson)"], _rows_success(torch_eval, deploy)),
        _scenes_text(summary.get("scenes")),
        "## Per instruction target",
        _md_table(["target", "PyTorch", "ONNX"], _rows_targets(torch_eval, deploy)),
        "## Training",
        f"{summary['train_steps']} steps in {summary['train_wall_s'] or 0:.0f} s "
        f"({summary['train_samples_per_s'] or 0:.0f} samples/s); final training loss {summary['final_loss'] or 0:.3f} "
        f"(action tokens plus the weighted auxiliary loss, if any), "
        f"action-token accuracy {summary['final_token_accuracy'] or 0:.3f}.",
    ]
    if curve:
        parts.append(f"![training curve]({curve.name})")
    parts += ["## Latency", _md_table(["runtime", "device", "decoding", "p50 ms", "p99 ms", "ms per action"],
                                      _rows_latency(bench))]
    if loop.get("rate_hz"):
        parts.append(f"Control loop at {loop['rate_hz']:g} Hz: step p50 {loop['step_p50_ms']:.2f} ms, p99 "
                     f"{loop['step_p99_ms']:.2f} ms; policy p50 {loop['policy_p50_ms']:.2f} ms, p99 "
                     f"{loop['policy_p99_ms']:.2f} ms; {loop['missed_deadlines']} missed deadlines, "
                     f"{loop['safe_stops']} safe stops.")
    if summary.get("parity"):
        p = summary["parity"]
        parts.append(f"Export parity: {p['mismatched_tokens']}/{p['tokens']} action tokens differ on {p['inputs']} "
                     f"inputs; max logit difference {p['max_logit_diff']:.1e}.")
    if gifs:
        parts.append("## Episodes")
        for kind, g in gifs.items():
            note = f" ({g['note']})" if g.get("note") else ""
            if "file" in g:
                parts.append(f"**{kind}**{note}: seed {g['seed']}, \"{g['instruction']}\"\n\n![{kind}]({g['file']})")
            else:
                parts.append(f"**{kind}**{note}.")
    parts += ["## Stage wall times (s)", _md_table(["stage", "seconds"], _rows_stages(summary))]
    for name, text in configs.items():
        parts.append(f"## Configs used: {name}\n\n```yaml\n{text}```")
    return "\n\n".join(parts) + "\n"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _html(summary, torch_eval, deploy, bench, curve, gifs, configs) -> str:
    loop = summary["control_loop"]
    sections = [
        f"<h1>VLA demo: {html.escape(summary['task'])}</h1>",
        f"<p>Environment settings <code>{html.escape(json.dumps(summary['env_kwargs']))}</code>; "
        f"total wall time {summary['total_wall_s']:.0f} s.</p>",
        "<h2>Success in simulation (held-out seeds)</h2>",
        _html_table(["policy", "successes", "rate", "95% CI (Wilson)"], _rows_success(torch_eval, deploy)),
        f"<p>{html.escape(_scenes_text(summary.get('scenes')))}</p>",
        "<h2>Per instruction target</h2>",
        _html_table(["target", "PyTorch", "ONNX"], _rows_targets(torch_eval, deploy)),
        "<h2>Training</h2>",
        f"<p>{summary['train_steps']} steps in {summary['train_wall_s'] or 0:.0f} s "
        f"({summary['train_samples_per_s'] or 0:.0f} samples/s).</p>",
    ]
    if curve:
        sections.append(f'<img src="{curve.name}" alt="training curve" width="900">')
    sections += ["<h2>Latency</h2>",
                 _html_table(["runtime", "device", "decoding", "p50 ms", "p99 ms", "ms per action"], _rows_latency(bench))]
    if loop.get("rate_hz"):
        sections.append(f"<p>Control loop at {loop['rate_hz']:g} Hz: step p50 {loop['step_p50_ms']:.2f} ms, "
                        f"p99 {loop['step_p99_ms']:.2f} ms; {loop['missed_deadlines']} missed deadlines, "
                        f"{loop['safe_stops']} safe stops.</p>")
    if gifs:
        sections.append("<h2>Episodes</h2><div style='display:flex;gap:24px'>")
        for kind, g in gifs.items():
            note = f" ({html.escape(g['note'])})" if g.get("note") else ""
            if "file" in g:
                sections.append(f"<figure><img src='{g['file']}' width='256'><figcaption>{kind}{note}: "
                                f"{html.escape(g['instruction'])} (seed {g['seed']})</figcaption></figure>")
            else:
                sections.append(f"<p><b>{kind}</b>{note}.</p>")
        sections.append("</div>")
    sections += ["<h2>Stage wall times (s)</h2>", _html_table(["stage", "seconds"], _rows_stages(summary))]
    for name, text in configs.items():
        sections.append(f"<h2>Configs used: {html.escape(name)}</h2><pre>{html.escape(text)}</pre>")
    style = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
             "th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;overflow:auto}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>VLA demo</title><style>{style}</style></head>" \
           f"<body>{''.join(sections)}</body></html>\n"

