"""The `vla` command line. Each command parses its arguments here and calls one function elsewhere."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vla.errors import VLAError


def _parse_env_kwargs(pairs: list[str]) -> dict:
    """`--env-kw image_size=64 --env-kw layout=slots` -> {"image_size": 64, "layout": "slots"}."""
    import yaml

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise VLAError(f"--env-kw expects key=value, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def _check_out_file(path: Path, overwrite: bool, append: bool) -> None:
    if overwrite and append:
        raise VLAError("--overwrite and --append exclude each other")
    if path.exists() and not (overwrite or append):
        raise VLAError(f"{path} exists; pass --overwrite to replace it or --append to add episodes")
    if overwrite and path.exists():
        path.unlink()


def cmd_collect(args) -> int:
    from vla.data.collect import collect

    out = Path(args.out)
    if args.suite:
        if args.recoveries:
            raise VLAError("--recoveries goes with --task, not --suite")
        from vla.data.collect import collect_suite, expert_success
        from vla.suites import load_suite

        suite = load_suite(args.suite)
        for env_id in suite.tasks:
            _valid_env_id(env_id)
        _check_out_file(out, args.overwrite, args.append)
        summary = collect_suite(suite, args.episodes, out, seed=args.seed or 0, workers=args.workers, noise=args.noise,
                                env_kwargs=_parse_env_kwargs(args.env_kw), all_targets=args.all_targets,
                                after_success=args.after_success)
        for env_id, row in summary["tasks"].items():
            ok, n = expert_success(row["outcomes"], row["first_seed"], args.episodes)
            print(f"{env_id}: {row['episodes_written']} episodes; expert {ok}/{n} on seeds {row['first_seed']}.."
                  f"{row['first_seed'] + args.episodes - 1}")
        print(f"wrote {summary['episodes_in_file']} episodes of {len(suite.tasks)} tasks to {out}")
        return 0
    env_id = _valid_env_id(args.task or _missing_task())
    _check_out_file(out, args.overwrite, args.append)
    summary = collect(
        env_id,
        episodes=args.episodes,
        out=out,
        seed=args.seed,
        workers=args.workers,
        keep_failures=args.keep_failures,
        noise=args.noise,
        env_kwargs=_parse_env_kwargs(args.env_kw),
        append=args.append,
        all_targets=args.all_targets,
        targets=args.targets,
        after_success=args.after_success,
        recoveries=args.recoveries,
    )
    print(
        f"wrote {summary['episodes_written']} episodes to {summary['out']} "
        f"({summary['attempts']} attempts, {summary['failures']} failed, seeds from {summary['first_seed']})"
    )
    return 0


def _missing_task():
    raise VLAError("--task or --suite is needed")


def _valid_env_id(task: str) -> str:
    import sims

    try:
        return sims.check_env_id(task)
    except ValueError as err:
        raise VLAError(str(err)) from None


def cmd_data_info(args) -> int:
    from vla.data.inspect import dataset_summary, format_summary

    summary = dataset_summary(args.file)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_data_video(args) -> int:
    from vla.data.inspect import episode_video

    out = episode_video(args.file, args.episode, args.out)
    print(f"wrote {out}")
    return 0


def cmd_data_import(args) -> int:
    from vla.data.lerobot import import_lerobot

    out = Path(args.out)
    _check_out_file(out, args.overwrite, append=False)
    hold = None if args.action_hold is None else [None if v.lower() in ("null", "none") else float(v)
                                                   for v in args.action_hold]
    summary = import_lerobot(args.dataset, out, action_hold=hold)
    print(f"imported {summary['episodes']} episodes ({summary['steps']} frames, cameras {summary['cameras']}, "
          f"{summary['fps']:g} fps) into {summary['out']}")
    return 0


def cmd_data_export(args) -> int:
    from vla.data.lerobot import export_lerobot

    summary = export_lerobot(args.file, args.out, repo_id=args.repo_id, crf=args.crf)
    print(f"wrote {summary['episodes']} episodes ({summary['frames']} frames, cameras {summary['cameras']}) as a "
          f"LeRobot v3.0 dataset in {summary['out']}")
    return 0


def cmd_train(args) -> int:
    from vla.training.config import load_train_config
    from vla.training.loop import train

    config = load_train_config(args.config, args.set)
    evaluate_fn = None
    if config.eval.every:
        evaluate_fn = _training_evaluator(config, Path(args.out))
    summary = train(config, args.out, evaluate_fn=evaluate_fn, stop_at_step=args.stop_at_step)
    if "stopped_at" in summary:
        print(f"stopped after step {summary['stopped_at']} (checkpointed); the same command resumes the run")
        return 0
    print(f"trained {summary['steps']} steps in {summary['train_wall_s']:.0f} s "
          f"({summary['mean_samples_per_s']:.0f} samples/s): loss {summary.get('loss', float('nan')):.3f}, "
          f"token accuracy {summary.get('accuracy', float('nan')):.3f}; policy in {Path(args.out) / 'policy'}")
    return 0


def _training_evaluator(config, out_dir: Path):
    def evaluate_checkpoint(checkpoint: Path, step: int) -> dict:
        from vla.evaluation import evaluate, evaluate_suite
        from vla.policy import TorchPolicy

        policy = TorchPolicy(checkpoint)
        env_args = policy.metadata["env_args"]
        suite = _policy_suite(config.eval.suite, env_args)
        if suite:
            result = evaluate_suite(policy, suite, config.eval.episodes, seed=config.eval.seed,
                                    workers=config.eval.workers, out_dir=out_dir / "eval" / f"step_{step:06d}",
                                    videos=1, progress=False)
            return {"success_rate": result["average_success_rate"],
                    **{f"success_rate/{task}": row["success_rate"] for task, row in result["tasks"].items()}}
        result = evaluate(policy, env_args["env_name"], config.eval.episodes, seed=config.eval.seed,
                          env_kwargs=env_args.get("env_kwargs", {}), workers=config.eval.workers,
                          out_dir=out_dir / "eval" / f"step_{step:06d}", videos=1, progress=False)
        return {"success_rate": result["success_rate"], "ci95_low": result["ci95"][0], "ci95_high": result["ci95"][1]}

    return evaluate_checkpoint


def _policy_suite(suite_name: str | None, env_args: dict):
    """What to evaluate a policy on when no single task is asked for: the named suite, the suite its data was
    collected as, or every task a store mixing collections holds (each with its own settings); None: one task."""
    from vla.suites import data_suite, load_suite

    name = suite_name or env_args.get("suite")
    return load_suite(name) if name else data_suite(env_args)


def cmd_eval(args) -> int:
    from vla.data.store import env_kwargs_for
    from vla.evaluation import DEFAULT_EVAL_SEED, evaluate, format_eval
    from vla.policy import load_policy

    policy = load_policy(args.policy, device=args.device)
    env_args = policy.metadata.get("env_args", {})
    seed = args.seed if args.seed is not None else DEFAULT_EVAL_SEED
    suite = None if args.task and not args.suite else _policy_suite(args.suite, env_args)
    if suite:
        from vla.evaluation import evaluate_suite, format_suite

        for env_id in suite.tasks:
            _valid_env_id(env_id)
        summary = evaluate_suite(policy, suite, args.episodes, seed=seed, env_kwargs=_parse_env_kwargs(args.env_kw),
                                 workers=args.workers, execute=args.execute, chunk_mode=args.chunk_mode,
                                 out_dir=args.out, videos=args.videos)
        print(format_suite(summary))
        print(f"wrote {Path(args.out) / 'eval.json'}")
        return 0
    env_id = _valid_env_id(args.task or env_args.get("env_name") or _missing("--task"))
    env_kwargs = env_kwargs_for(env_args, env_id)
    env_kwargs.update(_parse_env_kwargs(args.env_kw))
    summary = evaluate(policy, env_id, args.episodes, seed=seed,
                       env_kwargs=env_kwargs, workers=args.workers, execute=args.execute, chunk_mode=args.chunk_mode,
                       out_dir=args.out, videos=args.videos)
    print(format_eval(summary))
    print(f"wrote {Path(args.out) / 'eval.json'}")
    return 0


def _missing(flag: str):
    raise VLAError(f"{flag} is needed: the policy does not record which task it was trained on")


def cmd_export(args) -> int:
    from vla.export import export

    meta = export(args.checkpoint, args.out, fp16=args.fp16, parity_inputs=args.parity_inputs, overwrite=args.overwrite)
    parity = meta["parity"]
    print(f"exported {meta['decoding']} decoding to {args.out}: {', '.join(meta['files'])}; parity on "
          f"{parity['inputs']} inputs: {parity['mismatched_tokens']}/{parity['tokens']} tokens differ, "
          f"max logit difference {parity['max_logit_diff']:.1e}")
    return 0


def cmd_lexicon(args) -> int:
    from vla.data.store import EpisodeReader
    from vla.lexicon import write_lexicon
    from vla.training.checkpoints import resolve_policy_dir

    policy_dir = resolve_policy_dir(args.policy)
    stores = args.data
    if not stores:
        config = policy_dir / "config.json"
        stores = json.loads(config.read_text()).get("meta", {}).get("train_data") if config.exists() else None
        if not stores:
            raise VLAError(f"{policy_dir} does not record its training data: give --data STORE ...")
        missing = [store for store in stores if not Path(store).exists()]
        if missing:
            raise VLAError(f"{policy_dir} was trained on {', '.join(missing)}, which is not there: give --data STORE ...")
    instructions = []
    for store in stores:
        with EpisodeReader(store) as reader:
            instructions += [str(reader.attrs(i).get("instruction", "")) for i in range(len(reader))]
    instructions = [text for text in instructions if text.strip()]
    if not instructions:
        raise VLAError(f"{', '.join(map(str, stores))}: no instructions in the episodes")
    path = write_lexicon(instructions, policy_dir)
    data = json.loads(path.read_text())
    by_role = ", ".join(f"{sum(v is not None for v in table.values())} as {role}s"
                        for role, table in data["replace_by_role"].items())
    print(f"wrote {path}: {len(data['taught'])} taught words, {len(data['replace'])} other words mapped to them "
          f"({by_role})")
    return 0


def cmd_bench(args) -> int:
    from vla.bench import bench, format_table

    rows = bench(args.path, iters=args.iters, batch=args.batch)
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.json}")
    return 0


def cmd_deploy(args) -> int:
    from vla.deploy import deploy

    if bool(args.policy) == bool(args.server):
        raise VLAError("give exactly one of --policy (in-process) or --server (ws://host:port)")
    summary = deploy(policy_path=args.policy, server=args.server, api_key=args.api_key, env_id=args.sim,
                     rate_hz=args.rate, episodes=args.episodes, seed=args.seed, realtime=args.realtime,
                     execute=args.execute, chunk_mode=args.chunk_mode, device=args.device,
                     max_delta=args.max_delta, out=args.out, lead_ticks=args.lead_ticks)
    from vla.deploy import format_deploy

    print(format_deploy(summary))
    return 0


def cmd_serve(args) -> int:
    from policies.server import serve
    from vla.policy import load_policy

    policy = load_policy(args.policy, device=args.device)
    serve(policy, host=args.host, port=args.port, api_key=args.api_key or os.environ.get("VLA_API_KEY"),
          max_message_bytes=args.max_message_mb * 1024 * 1024, batch_window_ms=args.batch_window_ms)
    return 0


def cmd_demo(args) -> int:
    from vla.demo import run_demo

    run_demo(out=Path(args.out), force=args.force, episodes=args.episodes, eval_episodes=args.eval_episodes,
             steps=args.steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla", description="Vision-language-action policies: collect, train, eval, export, deploy.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="scripted demonstrations to HDF5")
    p.add_argument("--task", help="environment id, e.g. sims/Reach-v0 or metaworld/reach-v3")
    p.add_argument("--suite", help="every task of a suite (configs/suites/NAME.yaml) into one file")
    p.add_argument("--episodes", type=int, required=True, help="per task")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=None, help="first seed (default 0, or after the last one with --append)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--noise", type=float, default=0.0, help="std of Gaussian noise on executed actions (DART)")
    p.add_argument("--keep-failures", action="store_true")
    p.add_argument("--recoveries", type=float, default=0.0, metavar="SHARE",
                   help="the share of episodes whose first attempt goes wrong on purpose (a grasp that misses, a push "
                        "aimed off; executed, not labelled), so that the demonstrations show the recovery")
    p.add_argument("--after-success", type=int, default=0, metavar="STEPS",
                   help="keep recording the expert this many steps past each episode's first success")
    p.add_argument("--targets", nargs="+", default=None, metavar="COLOUR",
                   help="with --all-targets: only these objects are named (hold a colour out of a task's data)")
    p.add_argument("--all-targets", action="store_true",
                   help="demonstrate every layout once per object, each instruction naming another one")
    p.add_argument("--env-kw", action="append", metavar="KEY=VALUE", help="environment keyword argument")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true")
    group.add_argument("--append", action="store_true")
    p.set_defaults(func=cmd_collect)

    data = sub.add_parser("data", help="inspect, import or export a dataset").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("info", help="episodes, instructions and action statistics")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_info)
    p = data.add_parser("video", help="an episode's camera frames as mp4")
    p.add_argument("file")
    p.add_argument("--episode", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_data_video)
    p = data.add_parser("import", help="a LeRobot v3.0 dataset directory into an episode store")
    p.add_argument("dataset", help="the dataset's root (holding meta/info.json)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--action-hold", nargs="+", default=None, metavar="V",
                   help="per action dimension, what holding still means: a number (delta) or null (absolute, the "
                        "default for every dimension)")
    p.set_defaults(func=cmd_data_import)
    p = data.add_parser("export", help="an episode store as a LeRobot v3.0 dataset directory")
    p.add_argument("file")
    p.add_argument("--format", choices=["lerobot"], default="lerobot")
    p.add_argument("--out", required=True)
    p.add_argument("--repo-id", default=None)
    p.add_argument("--crf", type=int, default=20, help="AV1 quality (lower is better; LeRobot records at 30)")
    p.set_defaults(func=cmd_data_export)

    p = sub.add_parser("train", help="train a VLA from demonstrations (resumes from --out if it holds a checkpoint)")
    p.add_argument("--config", required=True, help="recipe name (configs/train/NAME.yaml) or YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", required=True)
    p.add_argument("--stop-at-step", type=int, default=None,
                   help="checkpoint and stop after this step (a run spread over sessions); run again to resume")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="roll a checkpoint or exported policy out in simulation")
    p.add_argument("--policy", required=True, help="checkpoint, training run or exported directory")
    p.add_argument("--task", help="environment id (default: the one the policy was trained on)")
    p.add_argument("--suite", help="every task of a suite (configs/suites/NAME.yaml), one eval.json")
    p.add_argument("--episodes", type=int, default=50, help="per task")
    p.add_argument("--seed", type=int, default=None, help="first seed (default 100000, away from demonstration seeds)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--execute", type=int, default=None, help="actions run per chunk (receding horizon; default all)")
    p.add_argument("--chunk-mode", choices=["receding", "ensemble"], default="receding")
    p.add_argument("--videos", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--env-kw", action="append", metavar="KEY=VALUE")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="ONNX export with a parity check against PyTorch")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--parity-inputs", type=int, default=32)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("lexicon", help="read words the demonstrations never used as taught ones (WordNet)")
    p.add_argument("policy", help="checkpoint, training run or exported directory: lexicon.json is written into it")
    p.add_argument("--data", nargs="+", help="the episode stores it was trained on (default: those its checkpoint names)")
    p.set_defaults(func=cmd_lexicon)

    p = sub.add_parser("bench", help="latency: PyTorch eager vs onnxruntime, parallel vs autoregressive")
    p.add_argument("path", help="checkpoint, training run or exported directory")
    p.add_argument("--json")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--batch", type=int, default=1)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("deploy", help="run the control loop against a simulated robot")
    p.add_argument("--policy", help="exported (or checkpoint) directory, run in-process")
    p.add_argument("--server", help="ws://host:port of a policy server")
    p.add_argument("--api-key", default=None)
    p.add_argument("--sim", required=True, help="environment id, e.g. sims/Reach-v0")
    p.add_argument("--rate", type=float, default=None,
                   help="control rate in Hz (default: the policy's control_hz, the demonstrations' rate)")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=200_000)
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=True,
                   help="sleep to hold the rate (default); --no-realtime runs as fast as the policy allows")
    p.add_argument("--execute", type=int, default=None)
    p.add_argument("--chunk-mode", choices=["receding", "ensemble"], default="receding")
    p.add_argument("--max-delta", type=float, nargs="+", default=None,
                   help="safety: largest change per step, one value or one per action dimension")
    p.add_argument("--lead-ticks", type=int, default=None,
                   help="ask for the next chunk this many ticks before the current one runs out (default: from the "
                        "measured latency; 0: only when it is used up)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="write deploy.json here")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("serve", help="websocket policy server (openpi's protocol)")
    p.add_argument("policy")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="required from clients (or set VLA_API_KEY)")
    p.add_argument("--max-message-mb", type=int, default=16)
    p.add_argument("--batch-window-ms", type=float, default=0.0, help="micro-batch requests arriving this close together")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="the whole pipeline on the default task, on a CPU, with a report")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--force", action="store_true", help="redo stages whose output exists")
    p.add_argument("--episodes", type=int, default=None, help="demonstrations to collect")
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--steps", type=int, default=None, help="training steps")
    p.set_defaults(func=cmd_demo)
    return parser


# Top-level modules of each extra (pyproject.toml), for a one-line message when one is missing.
EXTRA_OF_MODULE = {"gymnasium": "sim", "mujoco": "sim", "metaworld": "metaworld", "wn": "lexicon"} | {
    name: "train" for name in ("torch", "torchvision", "transformers", "timm", "peft", "accelerate", "bitsandbytes",
                               "safetensors", "h5py", "onnx", "onnxscript", "pyarrow", "av", "yaml", "tqdm",
                               "tensorboard", "matplotlib", "PIL")}


def missing_extra(module: str) -> str | None:
    return EXTRA_OF_MODULE.get(module.split(".")[0])


def main(argv: list[str] | None = None) -> int:
    if sys.platform.startswith("linux"):
        os.environ.setdefault("MUJOCO_GL", "egl")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except VLAError as err:
        print(f"vla {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vla {args.command}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as err:
        extra = missing_extra(err.name or "")
        if extra is None:
            raise
        print(f"vla {args.command}: needs {err.name!r}, which the base install leaves out: "
              f"pip install 'vla-robotics[{extra}]'", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `vla data info F | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
