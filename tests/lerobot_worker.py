"""Runs inside the lerobot environment (tests/lerobot_env.py), with lerobot's own code:

    python lerobot_worker.py write ROOT ORIGINALS.npz   a dataset written with LeRobotDataset's API
    python lerobot_worker.py read ROOT VALUES.npz       every frame of a dataset as LeRobotDataset reads it

Frames carry their (episode, frame) number in 16 px blocks, so that alignment can be checked exactly
after lossy video compression; the background is a smooth gradient, as camera images mostly are.
"""

from __future__ import annotations

import sys

import numpy as np

CAMERAS = {"front": (96, 128), "wrist": (64, 64)}
LENGTHS = (12, 15, 9)  # three episodes, all in one video file per camera
TASKS = ("pick up the red cube", "open the top drawer")
DIM = 6
BLOCK = 16
BITS = 10


def frame(camera: str, episode: int, t: int) -> np.ndarray:
    h, w = CAMERAS[camera]
    ys, xs = np.mgrid[0:h, 0:w]
    image = np.stack([40 + 100 * xs / w, 60 + 80 * ys / h, np.full((h, w), 90.0 + 3 * t)], -1)
    code = episode * 32 + t
    per_row = w // BLOCK
    for bit in range(BITS):
        r, c = divmod(bit, per_row)
        image[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK] = 235 if code >> bit & 1 else 20
    return image.astype(np.uint8)


def read_code(image: np.ndarray) -> int:
    """The (episode * 32 + frame) number painted by `frame`, read back from a decoded image."""
    per_row = image.shape[1] // BLOCK
    code = 0
    for bit in range(BITS):
        r, c = divmod(bit, per_row)
        block = image[r * BLOCK + 4 : (r + 1) * BLOCK - 4, c * BLOCK + 4 : (c + 1) * BLOCK - 4]
        code |= int(block.mean() > 128) << bit
    return code


def originals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    total = sum(LENGTHS)
    out = {f"frames_{cam}": np.stack([frame(cam, e, t) for e, n in enumerate(LENGTHS) for t in range(n)])
           for cam in CAMERAS}
    out["state"] = rng.normal(size=(total, DIM)).astype(np.float32)
    out["action"] = rng.uniform(-1, 1, size=(total, DIM)).astype(np.float32)
    out["episode"] = np.concatenate([np.full(n, e) for e, n in enumerate(LENGTHS)])
    out["task"] = np.array([TASKS[e % 2] for e, n in enumerate(LENGTHS) for _ in range(n)])
    return out


def write(root: str, originals_path: str) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    data = originals()
    features = {f"observation.images.{cam}": {"dtype": "video", "shape": (h, w, 3),
                                              "names": ["height", "width", "channels"]}
                for cam, (h, w) in CAMERAS.items()}
    features["observation.state"] = {"dtype": "float32", "shape": (DIM,), "names": [f"joint_{i}" for i in range(DIM)]}
    features["action"] = {"dtype": "float32", "shape": (DIM,), "names": [f"joint_{i}" for i in range(DIM)]}
    dataset = LeRobotDataset.create(repo_id="vla-tests/two-cameras", fps=10, features=features, root=root,
                                    use_videos=True)
    i = 0
    for e, n in enumerate(LENGTHS):
        for _ in range(n):
            dataset.add_frame({**{f"observation.images.{cam}": data[f"frames_{cam}"][i] for cam in CAMERAS},
                               "observation.state": data["state"][i], "action": data["action"][i],
                               "task": str(data["task"][i])})
            i += 1
        dataset.save_episode()
    dataset.finalize()
    np.savez(originals_path, **data)


def read(root: str, values_path: str) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset("vla-tests/exported", root=root, video_backend="pyav")
    items = [dataset[i] for i in range(len(dataset))]
    cameras = [k for k in dataset.meta.camera_keys]
    out = {key: np.stack([(item[key].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8) for item in items])
           for key in cameras}
    for key in ("observation.state", "action", "episode_index", "frame_index"):
        if key in items[0]:
            out[key] = np.stack([item[key].numpy() for item in items])
    out["task"] = np.array([item["task"] for item in items])
    out["fps"] = np.array(dataset.fps)
    out["num_episodes"] = np.array(dataset.num_episodes)
    np.savez(values_path, **{k.replace("/", "_"): v for k, v in out.items()})


if __name__ == "__main__":
    {"write": write, "read": read}[sys.argv[1]](*sys.argv[2:])
