"""Run a policy on your own robot: an exported directory in-process, or a policy server.

    python -m policies.robot_runner --robot my_arm.driver:Arm --robot-kw port=/dev/ttyUSB0 \\
        --policy runs/demo/export --prompt "reach the red cube" --rate 10 --max-steps 300

`--robot module:Class` names any class with the `Robot` methods (`get_observation`,
`apply_action`, `stop`, optionally `hold`); it is built with the `--robot-kw` values. The safety
filter clamps to the policy's action bounds (from its export, or the server's metadata) narrowed by
`--action-low` / `--action-high`, and limits each step's change to `--max-delta` (one value, or one
per action dimension). Ctrl-C, a late policy, a stale observation, a driver call that hangs, or any
exception stops the robot; the reason is printed. Needs no torch.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from policies.base import Policy, Robot
from policies.control_loop import ControlLoop, LoopReport
from policies.safety import SafetyFilter, safety_filter_for


def load_robot(spec: str, kwargs: dict | None = None) -> Robot:
    """'package.module:ClassName' -> ClassName(**kwargs), checked against the Robot protocol."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ValueError(f"--robot takes 'module:Class', got {spec!r}")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load robot class {spec!r}: {err}") from None
    robot = cls(**(kwargs or {}))
    missing = [m for m in ("get_observation", "apply_action", "stop") if not callable(getattr(robot, m, None))]
    if missing:
        raise TypeError(f"{spec} is not a Robot: it lacks {', '.join(missing)}")
    return robot


def run_robot(policy: Policy, robot: Robot, rate_hz: float, prompt: str, max_steps: int, safety: SafetyFilter,
              chunk_mode: str = "receding", execute: int | None = None,
              max_observation_age_s: float | None = None, watchdog_ticks: int = 5) -> LoopReport:
    """One run of the control loop; the robot is stopped at the end, however the run ends."""
    loop = ControlLoop(policy, robot, rate_hz=rate_hz, prompt=prompt, safety=safety, chunk_mode=chunk_mode,
                       execute=execute, max_observation_age_s=max_observation_age_s, realtime=True,
                       watchdog_ticks=watchdog_ticks)
    try:
        return loop.run(max_steps=max_steps)
    finally:
        robot.stop()


def _parse_kwargs(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--robot-kw takes key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m policies.robot_runner", description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--policy", help="exported directory (vla export), run in this process")
    source.add_argument("--server", help="ws://host:port of a policy server (vla serve)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--robot", required=True, help="module:Class implementing the Robot protocol")
    p.add_argument("--robot-kw", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--prompt", required=True, help="the instruction")
    p.add_argument("--rate", type=float, default=None, help="control rate in Hz (default: the policy's)")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--action-low", type=float, nargs="+", default=None)
    p.add_argument("--action-high", type=float, nargs="+", default=None)
    p.add_argument("--max-delta", type=float, nargs="+", default=None,
                   help="largest change per step: one value for every action dimension, or one per dimension")
    p.add_argument("--watchdog-ticks", type=int, default=5, help="ticks without progress before the robot is stopped")
    p.add_argument("--max-observation-age", type=float, default=None, help="seconds; older observations are stale")
    p.add_argument("--chunk-mode", choices=["receding", "ensemble"], default="receding")
    p.add_argument("--execute", type=int, default=None, help="actions of each chunk to run (receding horizon)")
    p.add_argument("--device", default="auto")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.policy:
            from policies.onnx_policy import OnnxPolicy

            policy = OnnxPolicy(args.policy, device=args.device)
        else:
            from policies.remote import RemotePolicy

            policy = RemotePolicy(args.server, api_key=args.api_key)
        robot = load_robot(args.robot, _parse_kwargs(args.robot_kw))
        safety = safety_filter_for(policy.metadata, args.action_low, args.action_high, args.max_delta)
    except (ValueError, TypeError, OSError, RuntimeError) as err:  # set-up problems: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    rate = args.rate or policy.metadata.get("control_hz") or 10.0
    try:
        report = run_robot(policy, robot, rate, args.prompt, args.max_steps, safety, args.chunk_mode, args.execute,
                           args.max_observation_age, args.watchdog_ticks)
    except KeyboardInterrupt:
        print("interrupted: robot stopped", file=sys.stderr)
        return 130
    print(json.dumps(report.summary(), indent=2))
    if report.safe_stop:
        print(f"robot stopped: {report.stop_reason}", file=sys.stderr)
    return 1 if report.safe_stop else 0


if __name__ == "__main__":
    sys.exit(main())
