"""`vla demo`: the whole pipeline on the built-in default task, on a CPU, with a report.

Stages (each skipped when its output exists, unless --force):
    collect  scripted demonstrations          OUT/data/demos.hdf5
    train    the tiny VLA, demo recipe         OUT/train/policy/
    eval     the PyTorch checkpoint            OUT/eval_torch/eval.json
    export   ONNX with the parity check        OUT/export/policy.json
    deploy   ONNX policy in the control loop   OUT/deploy/deploy.json
    bench    PyTorch eager vs onnxruntime      OUT/bench.json
    report   report.md, report.html, summary.json
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from vla.errors import VLAError

DEMO_TASK = "sims/Reach-v0"
# Cubes anywhere on the table: every evaluation seed is a scene never demonstrated (the report measures
# how far each is from the closest demonstration). The "slots" layout had 18 distinct scenes.
DEMO_ENV_KWARGS = {"image_size": 64, "layout": "random"}
DEMO_EPISODES = 4800  # with all_targets: 1600 scenes, each shown with every colour as the target
DEMO_NOISE = 0.2
DEMO_WORKERS = 2
DEMO_RECIPE = "demo"
DEMO_EVAL_SEED = 100_000
DEMO_DEPLOY_SEED = 200_000


class Stage:
    def __init__(self, name: str, out: Path, log: dict, force: bool):
        self.name, self.out, self.log, self.force = name, out, log, force

    def done(self, marker: Path) -> bool:
        if marker.exists() and not self.force:
            print(f"[{self.name}] output exists ({marker}); skipped (use --force to redo)", flush=True)
            self.log.setdefault(self.name, {"skipped": True, "wall_s": 0.0})
            return True
        return False


def run_stage(name: str, log: dict, out: Path, fn):
    print(f"\n=== {name} ===", flush=True)
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as err:
        raise VLAError(f"stage '{name}' failed: {type(err).__name__}: {err}. Fix the cause and run "
                       f"`vla demo --out {out}` again: finished stages are skipped, so it resumes here.") from err
    wall = time.perf_counter() - start
    if not log.get(name, {}).get("skipped"):
        log[name] = {"wall_s": wall}
    print(f"[{name}] {log[name]['wall_s']:.1f} s", flush=True)
    return result


def run_demo(out: Path = Path("runs/demo"), force: bool = False, episodes: int | None = None, eval_episodes: int = 50,
             steps: int | None = None, deploy_episodes: int | None = None, bench_iters: int = 50) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log: dict = {}
    started = time.perf_counter()
    episodes = episodes or DEMO_EPISODES
    deploy_episodes = deploy_episodes or eval_episodes
    data = out / "data" / "demos.hdf5"
    train_dir = out / "train"
    overrides = [f"data.paths=[{data}]"] + ([f"steps={steps}"] if steps else [])

    def collect_stage():
        stage = Stage("collect", out, log, force)
        if stage.done(data):
            return
        from vla.data.collect import collect

        tmp = data.with_suffix(".partial.hdf5")
        tmp.unlink(missing_ok=True)
        collect(DEMO_TASK, episodes=episodes, out=tmp, seed=0, workers=DEMO_WORKERS, noise=DEMO_NOISE,
                env_kwargs=DEMO_ENV_KWARGS, all_targets=True)
        tmp.replace(data)
        from vla.data.inspect import dataset_summary, format_summary

        print(format_summary(dataset_summary(data)))

    def train_stage():
        stage = Stage("train", out, log, force)
        if stage.done(train_dir / "policy" / "model.safetensors"):
            return
        from vla.training.config import load_train_config
        from vla.training.loop import train

        if force and train_dir.exists():
            shutil.rmtree(train_dir)
        train(load_train_config(DEMO_RECIPE, overrides), train_dir)

    def eval_stage():
        stage = Stage("eval", out, log, force)
        if stage.done(out / "eval_torch" / "eval.json"):
            return
        from vla.evaluation import evaluate, format_eval
        from vla.policy import TorchPolicy

        result = evaluate(TorchPolicy(train_dir / "policy"), DEMO_TASK, eval_episodes, seed=DEMO_EVAL_SEED,
                          env_kwargs=DEMO_ENV_KWARGS, out_dir=out / "eval_torch", videos=2)
        print(format_eval(result))

    def export_stage():
        stage = Stage("export", out, log, force)
        if stage.done(out / "export" / "policy.json"):
            return
        from vla.export import export

        meta = export(train_dir / "policy", out / "export", overwrite=True)
        p = meta["parity"]
        print(f"parity: {p['mismatched_tokens']}/{p['tokens']} tokens differ on {p['inputs']} inputs, "
              f"max logit difference {p['max_logit_diff']:.1e}")

    def deploy_stage():
        stage = Stage("deploy", out, log, force)
        if stage.done(out / "deploy" / "deploy.json"):
            return
        from vla.deploy import deploy, format_deploy
        from policies.onnx_policy import OnnxPolicy

        policy = OnnxPolicy(out / "export")
        result = deploy(DEMO_TASK, rate_hz=policy.metadata["control_hz"], episodes=deploy_episodes,
                        seed=DEMO_DEPLOY_SEED, policy=policy, realtime=True, out=out / "deploy")
        print(format_deploy(result))

    def bench_stage():
        stage = Stage("bench", out, log, force)
        if stage.done(out / "bench.json"):
            return
        from vla.bench import bench, format_table

        rows = bench(train_dir / "policy", iters=bench_iters)
        (out / "bench.json").write_text(json.dumps(rows, indent=2))
        print(format_table(rows))

    def report_stage():
        from vla.report import write_report

        collection = {"episodes": episodes, "first_seed": 0, "noise": DEMO_NOISE, "all_targets": True,
                      "workers": DEMO_WORKERS}
        return write_report(out, task=DEMO_TASK, env_kwargs=DEMO_ENV_KWARGS, stage_log=log,
                            total_wall_s=time.perf_counter() - started, collection=collection)

    for name, fn in (("collect", collect_stage), ("train", train_stage), ("eval", eval_stage),
                     ("export", export_stage), ("deploy", deploy_stage), ("bench", bench_stage)):
        run_stage(name, log, out, fn)
    summary = run_stage("report", log, out, report_stage)
    print(f"\nreport: {out / 'report.html'} and {out / 'report.md'}; headline figures in {out / 'summary.json'}")
    return summary
