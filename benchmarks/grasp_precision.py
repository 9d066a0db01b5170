"""How precise a grasp must be on a built-in task, and how precise a trained policy's grasps are.

    python benchmarks/grasp_precision.py POLICY [--task sims/Lift-v0] [--episodes 50] [--offsets 0 5 10 15 20]
        [--store runs/builtin/demos.hdf5]
    python benchmarks/grasp_precision.py --jitter 0 4 8 12 [--task sims/Lift-v0]   # no policy needed

Both parts run the task's environment as the policy's demonstrations were collected (their recorded settings).

1. The task's own expert with its grasp aimed a fixed distance (mm) from the named cube's centre, in a random
   horizontal direction per episode, on the same seeds for every distance: what error a grasp tolerates.
   With `--jitter`, the expert reads the cube with a fresh random error (mm, per axis) at every step, as a policy
   reading it from the image does, as it is now (it descends down a funnel: the lower, the closer in line) and as
   it was before (sharp gates: descend only once within 8 mm of the cube and close within 8 mm; for Push, descend
   within 12 mm of the spot behind the cube and push within 12 mm of the line): whether it survives an imprecise
   reading. Push, Lift and PickPlace.
2. The policy on the same task: where its gripper first closes near the table, relative to the named cube (mm),
   for the episodes it wins and those it loses (and, per loss, where it first closed at any height: a close
   on the cube's top, 4 cm up, is a grasp that missed), and, with `--store` (the demonstrations whose statistics
   standardized the auxiliary target), how far its auxiliary head places the cube from where it is in the
   first frame: whether a miss is the vision's reading of the scene or the action taken on it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import aux_reader  # noqa: E402

CLOSE_HEIGHT = 0.03  # a close above this is not a grasp attempt


def expert_tolerance(task: str, env_kwargs: dict, offsets_mm: list[float], episodes: int, seed: int) -> None:
    import gymnasium as gym

    from sims.experts import EXPERTS, MisreadCube, run_episode
    from vla.evaluation import wilson_interval

    env = gym.make(task, **env_kwargs)
    angles = np.random.default_rng(0).uniform(0, 2 * np.pi, episodes)
    print("| grasp aimed off the cube's centre | expert success | 95% CI (Wilson) |\n|---|---|---|")
    for offset in offsets_mm:
        successes = 0
        for episode, angle in enumerate(angles):
            aimed = MisreadCube(env.unwrapped, offset=offset / 1000 * np.array([np.cos(angle), np.sin(angle)]))
            for *_, info in run_episode(env, EXPERTS[env.unwrapped.task.name](aimed), seed + episode):
                pass
            successes += info["is_success"]
        low, high = wilson_interval(successes, episodes)
        print(f"| {offset:g} mm | {successes}/{episodes} | {100 * low:.0f}% - {100 * high:.0f}% |", flush=True)
    env.close()


def _before(expert_class):
    """The task's expert as it was before the funnels: the grasp descended only once within 8 mm of the cube and
    closed within 8 mm; the push descended only within 12 mm of the spot behind the cube and pushed within 12 mm
    of the line."""
    from sims.experts import GRASP_HEIGHT, OPEN, SAFE_HEIGHT, PushExpert

    if issubclass(expert_class, PushExpert):
        class PushBefore(expert_class):  # a 12 mm gate is a funnel 12 mm wide and flat
            LATERAL = FUNNEL_RADIUS = 0.012
            FUNNEL_SLOPE = 0.0

        return PushBefore

    class GraspBefore(expert_class):
        CLOSE_RADIUS = 0.008

        def _approach(self, tcp, cube):
            aligned = np.linalg.norm(tcp[:2] - cube[:2]) < 0.008
            if aligned or (np.linalg.norm(tcp[:2] - cube[:2]) < 0.015 and tcp[2] < SAFE_HEIGHT):
                return self._move(np.append(cube[:2], GRASP_HEIGHT), OPEN)
            if tcp[2] < SAFE_HEIGHT - 0.03:
                return self._move(np.append(tcp[:2], SAFE_HEIGHT), OPEN)
            return self._move(np.append(cube[:2], SAFE_HEIGHT), OPEN)

    return GraspBefore


def expert_jitter(task: str, env_kwargs: dict, spreads_mm: list[float], episodes: int, seed: int) -> None:
    import gymnasium as gym

    from sims.experts import EXPERTS, MisreadCube, run_episode

    env = gym.make(task, **env_kwargs)
    now = EXPERTS[env.unwrapped.task.name]
    print("| cube read with an error of (mm, per axis, per step) | now (funnel): success | mean steps "
          "| before (gates): success | mean steps |\n|---|---|---|---|---|")
    for spread in spreads_mm:
        cells = []
        for expert_class in (now, _before(now)):
            successes, steps = 0, []
            for episode in range(episodes):
                seen = MisreadCube(env.unwrapped, spread=spread / 1000, rng=np.random.default_rng(episode))
                for step, (*_, info) in enumerate(run_episode(env, expert_class(seen), seed + episode)):
                    pass
                successes += info["is_success"]
                steps.append(step + 1)
            cells += [f"{successes}/{episodes}", f"{np.mean(steps):.1f}"]
        print(f"| {spread:g} | " + " | ".join(cells) + " |", flush=True)
    env.close()


def _where(inner) -> str:
    """Where the gripper is, in words: over which cube (within 2 cm sideways), and how high."""
    height = f"{100 * inner.tcp[2]:.1f} cm up"
    for color in inner.placed_colors:
        if np.linalg.norm(inner.tcp[:2] - inner.object_position(color)[:2]) < 0.02:
            return f"over the {'named' if color == inner.target else 'other'} {color} cube, {height}"
    return f"over no cube, {height}"


def policy_grasps(policy, task: str, env_kwargs: dict, episodes: int, seed: int, store: str | None) -> None:
    import gymnasium as gym

    read_cube = aux_reader(policy.model, store)
    env = gym.make(task, **env_kwargs)
    inner = env.unwrapped
    rows = []  # (success, first close error mm or nan, closes, aux error mm or nan)
    losses = []
    for episode in range(episodes):
        obs, info = env.reset(seed=seed + episode)
        instruction = info["instruction"]
        aux_error = np.nan
        if read_cube is not None:
            aux_error = 1000 * np.linalg.norm((read_cube({**obs, "prompt": instruction}) - inner.target_position)[:2])
        closed, closes, first_error, done, highest, first_anywhere = False, 0, np.nan, False, 0.0, None
        while not done:
            for action in policy.act({**obs, "prompt": instruction}):
                closing = action[-1] > 0
                if closing and not closed and first_anywhere is None:
                    first_anywhere = (100 * inner.tcp[2], 1000 * np.linalg.norm(inner.tcp[:2] - inner.target_position[:2]))
                if closing and not closed and inner.tcp[2] < CLOSE_HEIGHT:
                    closes += 1
                    if np.isnan(first_error):
                        first_error = 1000 * np.linalg.norm(inner.tcp[:2] - inner.target_position[:2])
                closed = closing
                obs, _, terminated, truncated, info = env.step(action)
                highest = max(highest, float(inner.target_position[2]))
                if done := terminated or truncated:
                    break
        rows.append((bool(info["is_success"]), first_error, closes, aux_error))
        if not info["is_success"]:
            first = "never" if first_anywhere is None else f"{first_anywhere[0]:.1f} cm up, {first_anywhere[1]:.0f} mm off"
            losses.append(f"| {seed + episode} | {instruction} | {first} | {closes} | {_where(inner)} "
                          f"| {100 * highest:.1f} cm |")
    env.close()

    print("\n| episodes | count | first close: median mm from the cube (25th-75th) | closes per episode "
          "| auxiliary head's cube, median mm off (first frame) |\n|---|---|---|---|---|")
    for label, won in (("won", True), ("lost", False)):
        subset = [r for r in rows if r[0] == won]
        if not subset:
            continue
        errors = np.array([r[1] for r in subset])
        errors = errors[~np.isnan(errors)]
        spread = (f"{np.median(errors):.1f} ({np.percentile(errors, 25):.1f}-{np.percentile(errors, 75):.1f})"
                  if len(errors) else "no close")
        aux = np.array([r[3] for r in subset])
        aux_text = f"{np.nanmedian(aux):.1f}" if not np.all(np.isnan(aux)) else "-"
        print(f"| {label} | {len(subset)} | {spread} | {np.mean([r[2] for r in subset]):.1f} | {aux_text} |")
    print("\n| lost seed | instruction | first close (any height) | closes near the table | gripper at the end "
          "| named cube's highest centre |")
    print("|---|---|---|---|---|---|")
    print("\n".join(losses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", nargs="?", help="a checkpoint or training run")
    parser.add_argument("--task", default="sims/Lift-v0")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--offsets", type=float, nargs="*", default=[0, 5, 10, 15, 20], help="mm (none: skip)")
    parser.add_argument("--seed", type=int, default=100_000)
    parser.add_argument("--jitter", type=float, nargs="+", help="mm: the expert under a noisy reading of the cube "
                        "(now against before the funnels), instead of the policy's parts")
    parser.add_argument("--env-kw", action="append", default=["image_size=64", "layout=random"],
                        help="environment settings for --jitter (key=value)")
    parser.add_argument("--store", help="the demonstrations the policy was trained on (for its auxiliary head)")
    args = parser.parse_args()

    import sims  # noqa: F401  (registers the environments)
    from vla.data.store import env_kwargs_for
    from vla.policy import TorchPolicy
    from vla.training.checkpoints import resolve_policy_dir

    if args.jitter:
        from vla.cli import _parse_env_kwargs

        expert_jitter(args.task, _parse_env_kwargs(args.env_kw), args.jitter, args.episodes, args.seed)
        return
    if args.policy is None:
        parser.error("a policy is needed unless --jitter is given")
    policy = TorchPolicy(resolve_policy_dir(args.policy), device="cpu")
    env_kwargs = env_kwargs_for(policy.metadata.get("env_args", {}), args.task)
    print(f"{args.task} {env_kwargs}\n")
    if args.offsets:
        expert_tolerance(args.task, env_kwargs, args.offsets, args.episodes, args.seed)
    policy_grasps(policy, args.task, env_kwargs, args.episodes, args.seed, args.store)


if __name__ == "__main__":
    main()
