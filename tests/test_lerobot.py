"""LeRobot v3.0 in and out, checked against the real `lerobot` package (0.4.4 from PyPI, in its own cached
environment: tests/lerobot_env.py): a dataset written with LeRobotDataset's API imports frame for frame;
a dataset we export loads in LeRobotDataset with the same values. Bad directories fail with one line."""

import json
import shutil

import numpy as np
import pytest

import lerobot_env
from lerobot_worker import CAMERAS, LENGTHS, TASKS, read_code
from vla.data.lerobot import import_lerobot
from vla.data.store import EpisodeReader
from vla.errors import DatasetError


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def written_by_lerobot(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot")
    run = lerobot_env.run("write", str(root / "dataset"), str(root / "originals.npz"))
    assert run.returncode == 0, run.stderr[-3000:]
    with np.load(root / "originals.npz") as data:
        originals = {k: data[k] for k in data.files}
    return root / "dataset", originals


def test_a_dataset_written_by_lerobot_imports_frame_for_frame(written_by_lerobot, tmp_path):
    root, originals = written_by_lerobot
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert len(list((root / "videos/observation.images.front").rglob("*.mp4"))) == 1  # every episode in one file

    summary = import_lerobot(root, tmp_path / "imported.hdf5", progress=False)
    assert summary["episodes"] == len(LENGTHS) and summary["cameras"] == sorted(CAMERAS)
    with EpisodeReader(tmp_path / "imported.hdf5") as reader:
        assert len(reader) == len(LENGTHS) and sorted(reader.camera_keys(0)) == sorted(CAMERAS)
        assert reader.action_space["names"] == [f"joint_{i}" for i in range(6)]
        assert reader.action_space["hold"] == [None] * 6  # LeRobot's actions are taken as absolute
        start = 0
        for e, n in enumerate(LENGTHS):
            episode = reader.episode(e)
            rows = slice(start, start + n)
            assert episode.attrs["instruction"] == TASKS[e % 2] and episode.attrs["fps"] == 10
            np.testing.assert_array_equal(episode.actions, originals["action"][rows])
            np.testing.assert_array_equal(episode.observations["state"], originals["state"][rows])
            for cam in CAMERAS:
                frames = episode.observations[cam]
                assert [read_code(f) for f in frames] == [e * 32 + t for t in range(n)]  # aligned exactly
                assert psnr(frames, originals[f"frames_{cam}"][rows]) >= 35.0
            start += n


def test_an_exported_dataset_loads_in_lerobot_with_the_same_values(written_by_lerobot, tmp_path):
    from vla.cli import main as vla

    root, originals = written_by_lerobot
    store = tmp_path / "store.hdf5"
    import_lerobot(root, store, progress=False)
    assert vla(["data", "export", str(store), "--format", "lerobot", "--out", str(tmp_path / "exported")]) == 0
    run = lerobot_env.run("read", str(tmp_path / "exported"), str(tmp_path / "values.npz"))
    assert run.returncode == 0, run.stderr[-3000:]
    with np.load(tmp_path / "values.npz") as data:
        values = {k: data[k] for k in data.files}
    assert int(values["num_episodes"]) == len(LENGTHS) and float(values["fps"]) == 10
    np.testing.assert_allclose(values["action"], originals["action"], rtol=0, atol=0)
    np.testing.assert_allclose(values["observation.state"], originals["state"], rtol=0, atol=0)
    assert list(values["task"]) == list(originals["task"])
    np.testing.assert_array_equal(values["episode_index"], originals["episode"])
    for cam in CAMERAS:
        frames = values[f"observation.images.{cam}"]
        assert [read_code(f) for f in frames] == [read_code(f) for f in originals[f"frames_{cam}"]]
        assert psnr(frames, originals[f"frames_{cam}"]) >= 30.0  # compressed twice: by LeRobot, then by us


def test_a_two_camera_lerobot_dataset_trains_exports_and_serves(written_by_lerobot, tmp_path):
    """The imported dataset, both cameras, through training, export with parity and the policy server."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from policies.onnx_policy import OnnxPolicy
    from test_server import RunningServer
    from vla.cli import main as vla

    root, originals = written_by_lerobot
    store = tmp_path / "store.hdf5"
    import_lerobot(root, store, progress=False)
    settings = ["model_preset=tiny", f"data.paths=[{store}]", "steps=3", "batch_size=8", "checkpoint_every=3",
                "model.aux_loss=none", "model.vision.image_size=32", "data.augment_shift=0"]
    assert vla(["train", "--config", "demo", *[a for s in settings for a in ("--set", s)],
                "--out", str(tmp_path / "run")]) == 0
    assert vla(["export", str(tmp_path / "run"), "--out", str(tmp_path / "export")]) == 0
    spec = json.loads((tmp_path / "export" / "policy.json").read_text())
    assert spec["image_keys"] == ["front", "wrist"] and spec["parity"]["mismatched_tokens"] == 0
    assert spec["action_hold"] == [None] * 6 and spec["action_names"][0] == "joint_0"
    policy = OnnxPolicy(tmp_path / "export", device="cpu", verbose=False)
    obs = {"front": originals["frames_front"][0], "wrist": originals["frames_wrist"][0],
           "state": originals["state"][0], "prompt": TASKS[0]}
    with pytest.raises(ValueError, match=r"the observation has cameras \['front'\], the policy takes \['front', 'wrist'\]"):
        policy.act({k: v for k, v in obs.items() if k != "wrist"})
    running = RunningServer(policy=policy)
    try:
        client = WebsocketClientPolicy(running.url)
        assert client.get_server_metadata()["image_keys"] == ["front", "wrist"]
        assert client.infer(obs)["actions"].shape == (spec["chunk_size"], 6)
    finally:
        running.close()


# ---------------------------------------------------------------------------- bad input (no lerobot needed)


def test_bad_lerobot_directories_fail_with_one_line_naming_the_file(written_by_lerobot, tmp_path):
    root, _ = written_by_lerobot

    def broken(name):
        copy = tmp_path / name
        shutil.copytree(root, copy)
        return copy

    with pytest.raises(DatasetError, match="no meta/info.json; not a LeRobot dataset"):
        import_lerobot(tmp_path, tmp_path / "x.hdf5", progress=False)

    old = broken("old")
    info = json.loads((old / "meta/info.json").read_text())
    (old / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(DatasetError, match=r"meta/info.json: codebase_version 'v2.1'; this reads v3.0"):
        import_lerobot(old, tmp_path / "x.hdf5", progress=False)

    no_video = broken("no_video")
    next((no_video / "videos/observation.images.wrist").rglob("*.mp4")).unlink()
    with pytest.raises(DatasetError, match=r"observation.images.wrist/chunk-000/file-000.mp4: missing"):
        import_lerobot(no_video, tmp_path / "x.hdf5", progress=False)

    wrong_shape = broken("wrong_shape")
    info = json.loads((wrong_shape / "meta/info.json").read_text())
    info["features"]["observation.state"]["shape"] = [7]
    (wrong_shape / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"file-000.parquet: observation.state has \[6\] values per frame, "
                                           r"meta/info.json says \[7\]"):
        import_lerobot(wrong_shape, tmp_path / "x.hdf5", progress=False)
    assert not list(tmp_path.glob("*.hdf5")) and not list(tmp_path.glob(".x.hdf5*"))  # nothing half-written


def test_an_interrupted_import_leaves_nothing_behind(written_by_lerobot, tmp_path, monkeypatch):
    import vla.data.lerobot as lerobot

    root, _ = written_by_lerobot
    real = lerobot.LeRobotDataset.episodes

    def interrupted(self):
        for i, episode in enumerate(real(self)):
            if i == 2:
                raise KeyboardInterrupt
            yield episode

    monkeypatch.setattr(lerobot.LeRobotDataset, "episodes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_lerobot(root, tmp_path / "out.hdf5", progress=False)
    assert list(tmp_path.iterdir()) == []
