"""`vla deploy`: the control loop against a simulated robot, in-process or through a policy server."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import gymnasium as gym
import numpy as np

from policies.control_loop import ControlLoop
from policies.safety import safety_filter_for
from policies.sim_robot import SimRobot
from vla.data.store import env_kwargs_for
from vla.evaluation import summarize


def deploy(env_id: str, rate_hz: float | None, episodes: int, seed: int = 200_000, policy_path: str | None = None,
           server: str | None = None, api_key: str | None = None, realtime: bool = True, execute: int | None = None,
           chunk_mode: str = "receding", device: str = "auto", max_delta: float | list[float] | None = None,
           out: str | Path | None = None, policy=None, lead_ticks: int | None = None, env_kwargs: dict | None = None,
           rephrase=None) -> dict:
    """Run `episodes` episodes through ControlLoop; returns success, latency and loop statistics.
    `rate_hz` None: the policy's `control_hz`.

    `lead_ticks` overrides the loop's pipelining (0: ask for the next chunk only when the current one is
    used up); `rephrase(instruction, target, episode) -> instruction` replaces each episode's instruction
    (phrasings the demonstrations never used), as in `vla.evaluation.evaluate`."""
    import sims

    env_id = sims.check_env_id(env_id)
    if policy is None:
        if server:
            from policies.remote import RemotePolicy

            policy = RemotePolicy(server, api_key=api_key)
        else:
            from vla.policy import load_policy

            policy = load_policy(policy_path, device=device)
    meta = policy.metadata
    rate_hz = rate_hz or float(meta.get("control_hz") or 10.0)
    env_args = meta.get("env_args", {})
    kwargs = env_kwargs_for(env_args, env_id)
    env = gym.make(env_id, **{**kwargs, **(env_kwargs or {})})
    # The robot's own limits bound whatever the data's range says.
    safety = safety_filter_for(meta, env.action_space.low, env.action_space.high, max_delta)
    robot = SimRobot(env, seed=seed)
    results, loop_rows = [], []
    with ControlLoop(policy, robot, rate_hz=rate_hz, safety=safety, chunk_mode=chunk_mode,
                     execute=execute, realtime=realtime, lead_ticks=lead_ticks) as loop:
        for i in range(episodes):
            robot.reset(seed + i)
            loop.prompt = rephrase(robot.instruction, robot.info.get("target", ""), i) if rephrase else None
            report = loop.run(until=lambda: robot.done)
            loop_rows.append(report)
            results.append({"episode": i, "seed": seed + i, "success": robot.success, "steps": robot.steps,
                            "instruction": loop.prompt or robot.instruction, "target": robot.info.get("target", ""),
                            "stop_reason": report.stop_reason})
    env.close()
    summary = summarize(results)
    step_ms = [ms for r in loop_rows for ms in r.step_ms]
    policy_ms = [ms for r in loop_rows for ms in r.policy_ms]
    summary.update({
        "env_id": env_id,
        "rate_hz": rate_hz,
        "realtime": realtime,
        "policy": {k: v for k, v in meta.items() if k not in ("env_args",)},
        "step_p50_ms": float(np.percentile(step_ms, 50)) if step_ms else 0.0,
        "step_p99_ms": float(np.percentile(step_ms, 99)) if step_ms else 0.0,
        "policy_p50_ms": float(np.percentile(policy_ms, 50)) if policy_ms else 0.0,
        "policy_p99_ms": float(np.percentile(policy_ms, 99)) if policy_ms else 0.0,
        "steps_total": len(step_ms),
        "missed_deadlines": sum(r.missed_deadlines for r in loop_rows),
        "holds": sum(r.holds for r in loop_rows),
        "startup_ticks": sum(r.startup_ticks for r in loop_rows),
        "chunk_switches": sum(r.chunk_switches for r in loop_rows),
        "boundary_jump_max": max((j for r in loop_rows for j in r.boundary_jumps), default=0.0),
        "boundary_jump_mean": float(np.mean([j for r in loop_rows for j in r.boundary_jumps] or [0.0])),
        "dropped_actions": sum(r.dropped_actions for r in loop_rows),
        "lead_ticks": loop_rows[0].lead_ticks if loop_rows else 0,
        "warmup_ms": loop_rows[0].warmup_ms if loop_rows else [],
        "safe_stops": sum(r.safe_stop for r in loop_rows),
        "stop_reasons": dict(Counter(r.stop_reason for r in loop_rows if r.safe_stop)),
        "clamped": sum(r.clamped for r in loop_rows),
        "rate_limited": sum(r.rate_limited for r in loop_rows),
    })
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "deploy.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_deploy(s: dict) -> str:
    low, high = s["ci95"]
    return "\n".join([
        f"{s['env_id']} at {s['rate_hz']:g} Hz ({'real time' if s['realtime'] else 'as fast as possible'}), "
        f"{s['policy'].get('runtime', '?')} on {s['policy'].get('device', '?')}",
        f"  success        {s['successes']}/{s['num_episodes']} = {s['success_rate']:.1%} (95% CI {low:.1%}-{high:.1%})",
        f"  step latency   p50 {s['step_p50_ms']:.2f} ms, p99 {s['step_p99_ms']:.2f} ms over {s['steps_total']} steps",
        f"  policy calls   p50 {s['policy_p50_ms']:.2f} ms, p99 {s['policy_p99_ms']:.2f} ms",
        f"  missed deadlines {s['missed_deadlines']}, idle ticks {s['holds']} (start-up {s['startup_ticks']}), "
        f"chunk switches {s['chunk_switches']} (largest jump {s['boundary_jump_max']:.3f}), "
        f"lead {s['lead_ticks']} ticks",
        f"  safe stops {s['safe_stops']}, clamped {s['clamped']}, rate-limited {s['rate_limited']}",
        *(f"    {count} x {reason}" for reason, count in s["stop_reasons"].items()),
    ])
