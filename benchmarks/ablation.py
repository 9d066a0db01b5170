"""Levers of the CPU recipe, measured one at a time on a proxy task with the same wall-clock budget per arm.

    python benchmarks/ablation.py [--task sims/Push-v0] [--minutes 10] [--demos 1200] [--episodes 50]
                                  [--arms base,execute2,wrist,demos10x+after50,...] [--out runs/ablation]

Every arm starts from the demo recipe (configs/train/demo.yaml: tiny preset, 64 px, chunks of 4, the
auxiliary target head, DART noise 0.2, all-targets demonstrations at random layouts) and changes one thing.
A Meta-World task (`--task metaworld/reach-v3`) starts from the MT10 recipe instead (96 px, DART noise 0.1).
Its number of steps is set from a short throughput probe so that training takes `--minutes` (so a lever that
slows training pays for it), the cosine schedule runs to its end, and the policy is evaluated on the same
held-out seeds as every other arm (`budget2x` trains twice as long: whether the budget is what limits).
Arms that change only how a policy is run (`execute2`, `ensemble`) evaluate base's checkpoint. Demonstrations
are collected once per data setting and reused. Arms joined by `+` make one arm with all their changes.
"""

from __future__ import annotations

import argparse
import functools
import json
import operator
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
from _common import collected  # noqa: E402
from heldout_phrasings import heldout_rephraser  # noqa: E402


@dataclass(frozen=True)
class Family:
    """What an arm starts from, per kind of task."""
    recipe: str
    env: dict
    noise: float
    all_targets: bool
    heldout_phrasings: bool  # tests/heldout_phrasings.py is written for the built-in tasks only


FAMILIES = {
    "sims": Family("demo", {"image_size": 64, "layout": "random"}, noise=0.2, all_targets=True,
                   heldout_phrasings=True),
    "metaworld": Family("metaworld-mt10", {"image_size": 96}, noise=0.1, all_targets=False,
                        heldout_phrasings=False),
}


@dataclass
class Arm:
    does: str
    env: dict = field(default_factory=dict)  # environment settings of the data and the evaluation
    train: list[str] = field(default_factory=list)  # recipe overrides
    noise: float | None = None  # DART noise of the demonstrations (None: the task family's)
    demos: float = 1.0  # times --demos
    execute: int | None = None  # actions run per chunk at evaluation (None: all)
    chunk_mode: str = "receding"  # how chunks are executed at evaluation (policies/chunking.py)
    budget: float = 1.0  # times --minutes of training
    reuse: str | None = None  # evaluate this arm's checkpoint instead of training
    heldout: bool = False  # also evaluate phrasings no demonstration used (tests/heldout_phrasings.py)
    after_success: int | None = None  # expert steps recorded past each first success (None: 0)

    def __add__(self, other: "Arm") -> "Arm":
        """Both arms' changes at once (`--arms zoom+demos10x`)."""
        if self.reuse or other.reuse:
            raise ValueError("an arm that reuses another's checkpoint does not combine")
        pick = lambda a, b: b if b is not None else a  # noqa: E731
        return Arm(f"{self.does}; {other.does}", {**self.env, **other.env}, self.train + other.train,
                   pick(self.noise, other.noise), self.demos * other.demos,
                   heldout=self.heldout or other.heldout, budget=self.budget * other.budget,
                   after_success=pick(self.after_success, other.after_success))


ARMS = {
    "base": Arm("the starting recipe (demo; MT10 for Meta-World)", heldout=True),
    "execute2": Arm("run 2 of each chunk's 4 actions", execute=2, reuse="base"),
    "ensemble": Arm("ask every step, average the chunks' overlapping actions (ACT's temporal ensembling)",
                    chunk_mode="ensemble", reuse="base"),
    "budget2x": Arm("twice the training time", budget=2.0),
    "wrist": Arm("+ the wrist camera (one ViT for both)", env={"wrist_camera": True},
                 train=["model.image_keys=[image,wrist_image]", "model.vision_per_camera=false"]),
    "wrist_towers": Arm("+ the wrist camera, a ViT of its own", env={"wrist_camera": True},
                        train=["model.image_keys=[image,wrist_image]", "model.vision_per_camera=true"]),
    "side": Arm("+ a second fixed camera from the other front corner (Meta-World's `corner`), one ViT for both",
                env={"side_camera": True},
                train=["model.image_keys=[image,side_image]", "model.vision_per_camera=false"]),
    "96px": Arm("96 px images (36 tokens)", env={"image_size": 96}, train=["model.vision.image_size=96"]),
    "128px": Arm("128 px images (64 tokens)", env={"image_size": 128}, train=["model.vision.image_size=128"]),
    "fovy60": Arm("Meta-World's own 60 degree view from the corner camera", env={"camera_fovy": 60}),
    "patch8": Arm("8 px patches (64 tokens)", train=["model.vision.patch_size=8"]),
    "chunk8": Arm("chunks of 8 actions", train=["model.chunk_size=8"]),
    "dart0": Arm("no DART noise", noise=0.0),
    "dart0.3": Arm("DART noise 0.3 (more recoveries demonstrated)", noise=0.3),
    "no_aux": Arm("no auxiliary target head", train=["model.aux_loss=none"]),
    "demos2x": Arm("twice the demonstrations", demos=2.0),
    "demos4x": Arm("four times the demonstrations", demos=4.0),
    "demos10x": Arm("ten times the demonstrations", demos=10.0),
    "after50": Arm("50 expert steps recorded past each first success", after_success=50),
    "wide": Arm("a backbone twice as wide (256)",
                train=["model.backbone.hidden_size=256", "model.backbone.intermediate_size=768"]),
    "noise_words": Arm("instruction noise on half the samples", train=["data.instruction_noise=0.5"], heldout=True),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sims/Push-v0")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--demos", type=int, default=1200)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=500_000)
    parser.add_argument("--arms", default="base,execute2,wrist,96px,patch8,chunk8,no_aux,dart0,demos2x,wide,noise_words")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    args = parser.parse_args()

    from vla.evaluation import evaluate
    from vla.policy import TorchPolicy
    from vla.training.config import load_train_config
    from vla.training.loop import train

    names = args.arms.split(",")
    unknown = [part for n in names for part in n.split("+") if part not in ARMS]
    if unknown:
        print(f"unknown arms {unknown}; known: {', '.join(ARMS)} (combine with +)", file=sys.stderr)
        return 2
    arms = {n: functools.reduce(operator.add, (ARMS[part] for part in n.split("+"))) for n in names}
    results = {}
    results_path = args.out / f"{args.task.replace('/', '_')}.json"
    if results_path.exists():
        results = json.loads(results_path.read_text())
    family = FAMILIES[args.task.split("/")[0]]
    for name in names:
        arm = arms[name]
        if name in results:
            continue
        env = {**family.env, **arm.env}
        source = ARMS[arm.reuse] if arm.reuse else arm
        data_env = {**family.env, **source.env}
        noise = family.noise if source.noise is None else source.noise
        demos = int(args.demos * source.demos)
        after_success = source.after_success or 0
        key = "_".join([args.task.replace("/", "_"), *(f"{k}={v}" for k, v in sorted(data_env.items())),
                        f"noise={noise}", f"n={demos}", *([f"after={after_success}"] if after_success else [])])
        data = collected(args.out / "data" / f"{key}.hdf5", args.task, episodes=demos, seed=0, workers=2, noise=noise,
                         env_kwargs=data_env, all_targets=family.all_targets, after_success=after_success)
        run = args.out / (arm.reuse or name)
        if not (run / "train" / "policy").exists():
            # eval.every=0: each arm is evaluated below, on the same held-out seeds as the others
            overrides = [f"data.paths=[{data}]", "eval.every=0", *source.train]
            probe = train(load_train_config(family.recipe, overrides + ["steps=40", "log_every=20",
                                                                        "checkpoint_every=40"]),
                          run / "probe", progress=False)
            # The probe's second window (steps 21-40): its mean would count the first steps' warm-up
            steps = max(100, int(source.budget * args.minutes * 60 * probe["samples_per_s"] / 64))
            train(load_train_config(family.recipe, overrides + [f"steps={steps}", "checkpoint_every=100000"]),
                  run / "train", progress=False)
        summary = json.loads((run / "train" / "train_summary.json").read_text())
        started = time.perf_counter()
        result = evaluate(TorchPolicy(run / "train" / "policy", device="cpu"), args.task, args.episodes,
                          seed=args.seed, env_kwargs=env, workers=2, execute=arm.execute, chunk_mode=arm.chunk_mode,
                          videos=0, progress=False)
        results[name] = {"does": arm.does, "steps": summary["steps"], "samples_per_s": summary["mean_samples_per_s"],
                         "train_minutes": summary["train_wall_s"] / 60, "successes": result["successes"],
                         "episodes": result["num_episodes"], "ci95": result["ci95"],
                         "eval_minutes": (time.perf_counter() - started) / 60}
        if arm.heldout and family.heldout_phrasings:
            import sims

            rephrase = heldout_rephraser(sims.ENV_SPECS[args.task]["task"])
            heldout = evaluate(TorchPolicy(run / "train" / "policy", device="cpu"), args.task, args.episodes,
                               seed=args.seed, env_kwargs=env, workers=2, execute=arm.execute,
                               chunk_mode=arm.chunk_mode, videos=0, progress=False, rephrase=rephrase)
            results[name]["heldout_successes"] = heldout["successes"]
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2))
        print(f"{name}: {result['successes']}/{result['num_episodes']}", flush=True)
    print(f"\n{args.task}, {args.minutes:g} minutes of training per arm, {args.episodes} held-out episodes "
          f"(seeds from {args.seed}), {args.demos} demonstrations unless noted\n")
    print("| arm | changes | steps | samples/s | train min | success | 95% CI | held-out phrasings |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        row = results[name]
        low, high = row["ci95"]
        heldout = f"{row['heldout_successes']}/{row['episodes']}" if "heldout_successes" in row else ""
        print(f"| {name} | {row['does']} | {row['steps']} | {row['samples_per_s']:.0f} | {row['train_minutes']:.1f} | "
              f"{row['successes']}/{row['episodes']} | {100 * low:.0f}-{100 * high:.0f}% | {heldout} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
