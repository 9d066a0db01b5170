"""How precisely the tiny preset's vision tower reads a Meta-World goal's position from the corner camera, at
Meta-World's 60 degree field of view and narrowed: the tower and the auxiliary target head alone (no language
model, no actions) trained to predict the privileged goal position from one frame, on the same demonstrations
seen through each view, then measured on held-out episodes.

    python benchmarks/metaworld_goal_localization.py [--task metaworld/reach-v3] [--demos 1000] [--steps 1500]
                                                     [--fovy 60 30] [--out runs/localization]

The error is the mean absolute error per world axis in cm on the last 10% of the episodes (never trained on);
z is height; corner2 looks along about (-0.75, 0.46, -0.48), so its line of sight mixes x, y and z. For scale:
reach succeeds when the fingertips come within 5 cm of the goal (benchmarks/metaworld_reach_tolerance.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import collected  # noqa: E402


def load_frames(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> images uint8 [N, H, W, 3], target positions float [N, 3], episode index [N]."""
    from vla.data.store import EpisodeReader

    images, positions, episodes = [], [], []
    with EpisodeReader(path) as reader:
        for i in range(len(reader)):
            episode = reader.episode(i, keys=("image", "target_position"))
            images.append(episode.observations["image"])
            positions.append(episode.observations["target_position"])
            episodes.append(np.full(len(positions[-1]), i))
    return np.concatenate(images), np.concatenate(positions), np.concatenate(episodes)


def train_localizer(images, positions, episodes, steps: int, image_size: int, seed: int = 0) -> list[tuple]:
    """-> [(step, seconds, |error| per axis in m)] on the held-out episodes, every 250 steps."""
    import torch

    from vla.model.config import load_model_config
    from vla.model.vision import VisionTower
    from vla.model.vla import AuxiliaryHead

    torch.manual_seed(seed)
    config = load_model_config("tiny", {"vision": {"image_size": image_size}})
    mean, std = positions.mean(0), positions.std(0)
    held_out = episodes >= 0.9 * (episodes.max() + 1)
    train_images, train_targets = torch.from_numpy(images[~held_out]), torch.from_numpy((positions[~held_out] - mean) / std).float()
    test_images, test_positions = torch.from_numpy(images[held_out]), positions[held_out]
    width = config.backbone.hidden_size
    tower = VisionTower(config.vision, None, config.projector, width, film_dim=0)
    head = AuxiliaryHead(width, 0, 3)
    params = [*tower.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(seed)
    rows, start = [], time.perf_counter()
    for step in range(steps + 1):
        if step % 250 == 0:
            with torch.no_grad():
                predicted = torch.cat([head(tower(chunk), None) for chunk in test_images.split(256)]).numpy() * std + mean
            rows.append((step, time.perf_counter() - start, np.abs(predicted - test_positions).mean(0)))
        if step == steps:
            break
        batch = torch.randint(0, len(train_images), (64,), generator=generator)
        loss = ((head(tower(train_images[batch]), None) - train_targets[batch]) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="metaworld/reach-v3")
    parser.add_argument("--demos", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--fovy", type=float, nargs="+", default=[60, 30])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--out", type=Path, default=Path("runs/localization"))
    args = parser.parse_args()

    results = {}
    for fovy in args.fovy:
        data = collected(args.out / f"{args.task.replace('/', '_')}_fovy{fovy:g}_{args.image_size}px_n{args.demos}.hdf5",
                         args.task, episodes=args.demos, seed=0, workers=2, noise=0.1,
                         env_kwargs={"image_size": args.image_size, "camera_fovy": fovy})
        results[fovy] = train_localizer(*load_frames(data), args.steps, args.image_size)
        print(f"fovy {fovy:g}: done", flush=True)
    print(f"\n{args.task}, {args.demos} demonstrations ({args.image_size} px), the goal's position read by the tiny "
          f"vision tower, mean |error| on held-out episodes\n")
    print("| field of view | step | training s | x | y | z (height) |")
    print("|---|---|---|---|---|---|")
    for fovy, rows in results.items():
        for step, seconds, error in rows:
            if step and (step % 500 == 0 or step == args.steps):
                x, y, z = 100 * error
                print(f"| {fovy:g} deg | {step} | {seconds:.0f} | {x:.1f} cm | {y:.1f} cm | {z:.1f} cm |")


if __name__ == "__main__":
    main()
