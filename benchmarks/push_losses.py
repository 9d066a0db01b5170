"""How a policy loses Push: what the named cube did in each episode it lost.

    python benchmarks/push_losses.py POLICY [--episodes 50] [--seed 100000] [--max-steps 200]

POLICY is a checkpoint, a training run or an export (`vla.policy.load_policy`). The environment is the one its
demonstrations were collected in (their recorded settings). Each lost episode is put in the first of these
that fits:

- *another cube*: the named cube moved under 2 cm and another one over 2 cm (the wrong cube pushed);
- *never pushed*: the named cube moved under 1 cm;
- *off line*: the cube's first 3 cm went over 30 degrees away from the direction to the zone's centre;
- *short*: the rest (pushed roughly toward the zone and stopped, or still pushing when time ran out).

(A cube that reaches the zone ends the episode as a win, so no loss passes through it.)

and the table lists, per lost seed, the first push's angle off the zone's direction, the cube's closest and final
distance to the zone's centre, how far it moved in all, the last step at which it moved (over 5 mm in the 10
steps before), and where the tool spent the episode's last 20 steps: how far it travelled, its mean distance
from the cube and its mean height. `--max-steps` gives the episodes longer than the task's own limit, to tell a
push still under way from one that stopped.
"""

from __future__ import annotations

import argparse

import numpy as np

FIRST_PUSH = 0.03  # m of cube travel that set the push's direction
OFF_LINE = 30.0  # degrees
MOVING = 0.005  # m in WINDOW steps: the cube is still being pushed
WINDOW = 10
TAIL = 20  # steps at the episode's end over which the tool's whereabouts are summarized


def push_episode(policy, env, seed: int) -> dict:
    obs, info = env.reset(seed=seed)
    inner = env.unwrapped
    instruction = info["instruction"]
    start = {color: inner.object_position(color)[:2].copy() for color in inner.placed_colors}
    to_zone = inner.zone - start[inner.target]
    first_angle, closest, done, steps = np.nan, np.inf, False, 0
    cubes, tools = [start[inner.target]], [inner.tcp.copy()]
    while not done:
        for action in policy.act({**obs, "prompt": instruction}):
            obs, _, terminated, truncated, info = env.step(action)
            steps += 1
            cube = inner.object_position(inner.target)[:2]
            moved = cube - start[inner.target]
            if np.isnan(first_angle) and np.linalg.norm(moved) > FIRST_PUSH:
                cosine = moved @ to_zone / (np.linalg.norm(moved) * np.linalg.norm(to_zone))
                first_angle = float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))
            cubes.append(cube.copy())
            tools.append(inner.tcp.copy())
            distance = float(np.linalg.norm(cube - inner.zone))
            closest = min(closest, distance)
            if done := terminated or truncated:
                break
    moved_named = float(np.linalg.norm(moved))
    moved_other = max((float(np.linalg.norm(inner.object_position(c)[:2] - start[c]))
                       for c in inner.placed_colors if c != inner.target), default=0.0)
    if info["is_success"]:
        kind = "won"
    elif moved_named < 0.02 and moved_other > 0.02:
        kind = "another cube"
    elif moved_named < 0.01:
        kind = "never pushed"
    elif first_angle > OFF_LINE:
        kind = "off line"
    else:
        kind = "short"
    cubes, tools = np.array(cubes), np.array(tools)
    moving = np.linalg.norm(cubes[WINDOW:] - cubes[:-WINDOW], axis=1) > MOVING if len(cubes) > WINDOW else []
    tail = tools[-TAIL:]
    return {"seed": seed, "instruction": instruction, "kind": kind, "steps": steps, "first_angle": first_angle,
            "closest": closest, "final": distance, "moved": moved_named, "start": float(np.linalg.norm(to_zone)),
            "last_moved": int(np.flatnonzero(moving)[-1] + WINDOW) if np.any(moving) else 0,
            "tail_travel": float(np.linalg.norm(np.diff(tail, axis=0), axis=1).sum()),
            "tail_to_cube": float(np.linalg.norm(tail[:, :2] - cubes[-1], axis=1).mean()),
            "tail_height": float(tail[:, 2].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy")
    parser.add_argument("--task", default="sims/Push-v0")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=100_000)
    parser.add_argument("--max-steps", type=int, default=None, help="episode limit (default: the task's own)")
    args = parser.parse_args()

    import gymnasium as gym

    import sims  # noqa: F401  (registers the environments)
    from vla.data.store import env_kwargs_for
    from vla.policy import load_policy

    policy = load_policy(args.policy, device="cpu")
    env_kwargs = env_kwargs_for(policy.metadata.get("env_args", {}), args.task)
    if args.max_steps:
        env_kwargs["max_episode_steps"] = args.max_steps
    env = gym.make(args.task, **env_kwargs)
    print(f"{args.task} {env_kwargs}, seeds {args.seed}-{args.seed + args.episodes - 1}\n")
    rows = [push_episode(policy, env, args.seed + episode) for episode in range(args.episodes)]
    env.close()

    kinds = ["won", "another cube", "never pushed", "off line", "short"]
    print("| outcome | episodes |\n|---|---|")
    for kind in kinds:
        print(f"| {kind} | {sum(r['kind'] == kind for r in rows)} |")
    print("\n| lost seed | instruction | outcome | first 3 cm, degrees off the zone | cube to zone centre: start / "
          f"closest / end (cm) | cube moved (cm) | cube last moved, step | steps | last {TAIL} steps: tool travelled (cm) / "
          "from the cube (cm) / height (cm) |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["kind"] != "won":
            angle = "-" if np.isnan(r["first_angle"]) else f"{r['first_angle']:.0f}"
            print(f"| {r['seed']} | {r['instruction']} | {r['kind']} | {angle} | {100 * r['start']:.1f} / "
                  f"{100 * r['closest']:.1f} / {100 * r['final']:.1f} | {100 * r['moved']:.1f} | {r['last_moved']} | "
                  f"{r['steps']} | {100 * r['tail_travel']:.1f} / {100 * r['tail_to_cube']:.1f} / "
                  f"{100 * r['tail_height']:.1f} |")
    won = [r for r in rows if r["kind"] == "won"]
    if won:
        angles = np.array([r["first_angle"] for r in won])
        print(f"\nwon: first 3 cm median {np.nanmedian(angles):.0f} degrees off the zone "
              f"(90th percentile {np.nanpercentile(angles, 90):.0f}), median {np.median([r['steps'] for r in won]):.0f} steps")


if __name__ == "__main__":
    main()
