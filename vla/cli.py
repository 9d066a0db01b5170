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

    env_id = _valid_env_id(args.task)
    out = Path(args.out)
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
    )
    print(
        f"wrote {summary['episodes_written']} episodes to {summary['out']} "
        f"({summary['attempts']} attempts, {summary['failures']} failed, seeds from {summary['first_seed']})"
    )
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla", description="Vision-language-action policies: collect, train, eval, export, deploy.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="scripted demonstrations to HDF5")
    p.add_argument("--task", required=True, help="environment id, e.g. sims/Reach-v0")
    p.add_argument("--episodes", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=None, help="first seed (default 0, or after the last one with --append)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--noise", type=float, default=0.0, help="std of Gaussian noise on executed actions (DART)")
    p.add_argument("--keep-failures", action="store_true")
    p.add_argument("--env-kw", action="append", metavar="KEY=VALUE", help="environment keyword argument")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true")
    group.add_argument("--append", action="store_true")
    p.set_defaults(func=cmd_collect)

    data = sub.add_parser("data", help="inspect a dataset").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("info", help="episodes, instructions and action statistics")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_info)
    p = data.add_parser("video", help="an episode's camera frames as mp4")
    p.add_argument("file")
    p.add_argument("--episode", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_data_video)
    return parser


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


if __name__ == "__main__":
    sys.exit(main())
