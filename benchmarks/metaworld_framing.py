"""How much of the corner camera's view Meta-World's tasks use: the hand, the object and the goal along the
scripted experts' episodes, projected into `corner2`, as the largest distance from the image's centre (1.0 is
the frame's edge), at Meta-World's 60 degree field of view and at narrower ones from the same pose.

    python benchmarks/metaworld_framing.py [--suite metaworld-mt10] [--seeds 10] [--fovy 60 40 30 25]

An offset under 1.0 is in the frame; the goal of the articulated tasks (doors, drawers, windows, the button)
is a point the env does not draw, so only the hand and the object have to stay in view there.
"""

from __future__ import annotations

import argparse

import numpy as np


def normalized_offsets(points: np.ndarray, camera_pos: np.ndarray, camera_mat: np.ndarray, fovy: float) -> np.ndarray:
    """[N, 3] world points -> [N] largest |x| or |y| in the image, 1.0 at the frame's edge (a square image)."""
    local = (points - camera_pos) @ camera_mat  # camera frame: x right, y up, looking along -z
    return np.abs(local[:, :2] / -local[:, 2:3]).max(axis=1) / np.tan(np.radians(fovy) / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="metaworld-mt10")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--fovy", type=float, nargs="+", default=[60, 40, 30, 25])
    parser.add_argument("--camera", default=None, help="the camera to frame (default: the front camera, corner2)")
    args = parser.parse_args()

    import gymnasium as gym
    import mujoco

    import sims  # noqa: F401  (registers the environments)
    from sims.metaworld import FRONT_CAMERA, META_WORLD_FOVY, MetaWorldExpert
    from vla.suites import load_suite

    camera_name = args.camera or FRONT_CAMERA
    parts = {"hand": slice(0, 3), "object": slice(4, 7), "goal": slice(36, 39)}
    print(f"{camera_name}: largest offset from the image centre over {args.seeds} expert episodes "
          "(1.0: the frame's edge)\n")
    print("| task | " + " | ".join(f"{p} at {f:g}°" for f in args.fovy for p in parts) + " |")
    print("|---" * (1 + len(args.fovy) * len(parts)) + "|")
    for task in load_suite(args.suite).tasks:
        env = gym.make(task, camera_fovy=META_WORLD_FOVY)
        inner = env.unwrapped
        seen = []
        for seed in range(args.seeds):
            env.reset(seed=seed)
            expert = MetaWorldExpert(env)
            done = False
            while not done:
                seen.append(inner.raw_observation.copy())
                _, _, terminated, truncated, _ = env.step(expert.act())
                done = terminated or truncated
        model, data = inner._env.model, inner._env.data
        camera = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera_name)
        pos, mat = data.cam_xpos[camera].copy(), data.cam_xmat[camera].reshape(3, 3).copy()
        seen = np.asarray(seen)
        cells = [f"{normalized_offsets(seen[:, part], pos, mat, fovy).max():.2f}"
                 for fovy in args.fovy for part in parts.values()]
        print(f"| {task.split('/')[1]} | " + " | ".join(cells) + " |", flush=True)
        env.close()


if __name__ == "__main__":
    main()
