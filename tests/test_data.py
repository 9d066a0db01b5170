import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from vla.cli import main
from vla.data.collect import collect
from vla.data.inspect import dataset_summary
from vla.data.store import EpisodeReader, dimension_stats
from vla.errors import DatasetError


def test_collect_writes_robomimic_layout(tmp_path):
    out = tmp_path / "demo.hdf5"
    summary = collect("sims/Reach-v0", episodes=4, out=out, seed=10, progress=False, env_kwargs={"image_size": 64})
    assert summary["episodes_written"] == 4
    with h5py.File(out) as f:
        demo = f["data/demo_0"]
        steps = demo["actions"].shape[0]
        assert demo["obs/image"].shape == (steps, 64, 64, 3) and demo["obs/image"].dtype == np.uint8
        assert demo["obs/state"].shape == (steps, 4)
        assert demo["actions"].shape == (steps, 4)
        assert demo["rewards"].shape == (steps,) and demo["dones"][-1]
        for key in ("instruction", "task", "seed", "fps", "target"):
            assert key in demo.attrs
        assert demo.attrs["seed"] == 10
    with EpisodeReader(out) as reader:
        assert len(reader) == 4
        # what was passed, and every other setting at the default it took (not the task or rendering for videos)
        settings = reader.env_args["env_kwargs"]
        assert settings["image_size"] == 64 and settings["layout"] == "random" and settings["control_hz"] == 10
        assert not {"task", "render_mode", "render_size", "max_episode_steps"} & set(settings)


def test_collection_can_record_the_expert_past_success(tmp_path):
    plain = collect("sims/Reach-v0", episodes=2, out=tmp_path / "a.hdf5", seed=5, progress=False,
                    env_kwargs={"image_size": 32})
    more = collect("sims/Reach-v0", episodes=2, out=tmp_path / "b.hdf5", seed=5, progress=False,
                   env_kwargs={"image_size": 32}, after_success=6)
    assert plain["outcomes"] == more["outcomes"]
    with EpisodeReader(tmp_path / "a.hdf5") as a, EpisodeReader(tmp_path / "b.hdf5") as b:
        assert b.env_args["after_success"] == 6
        for i in range(2):
            steps = len(a.episode(i).actions)
            assert a.attrs(i)["success_step"] == steps - 1
            assert b.attrs(i)["success_step"] == steps - 1 and len(b.episode(i).actions) == steps + 6
    with pytest.raises(DatasetError, match="after-success"):
        collect("sims/Reach-v0", episodes=1, out=tmp_path / "c.hdf5", progress=False, after_success=-1)


def test_collection_records_recoveries_and_refuses_them_where_nothing_can_go_wrong(tmp_path):
    for env_id in ("sims/Lift-v0", "sims/Push-v0"):
        out = tmp_path / f"{env_id.split('/')[1]}.hdf5"
        collect(env_id, episodes=6, out=out, seed=0, progress=False, env_kwargs={"image_size": 32}, recoveries=0.5)
        with EpisodeReader(out) as reader:
            recovered = [reader.attrs(i)["recovery"] for i in range(len(reader))]
            assert reader.env_args["recoveries"] == 0.5
        assert 0 < sum(recovered) < len(recovered), env_id
    with pytest.raises(DatasetError, match="can go wrong"):
        collect("sims/Reach-v0", episodes=1, out=tmp_path / "reach.hdf5", progress=False, recoveries=0.5)
    with pytest.raises(DatasetError, match=r"\[0, 1\]"):
        collect("sims/Lift-v0", episodes=1, out=tmp_path / "x.hdf5", progress=False, recoveries=1.5)


def test_collection_is_the_same_with_one_or_two_workers(tmp_path):
    one = collect("sims/Lift-v0", episodes=3, out=tmp_path / "a.hdf5", seed=0, progress=False)
    two = collect("sims/Lift-v0", episodes=3, out=tmp_path / "b.hdf5", seed=0, workers=2, progress=False)
    assert one["episodes_written"] == two["episodes_written"] == 3
    with EpisodeReader(tmp_path / "a.hdf5") as a, EpisodeReader(tmp_path / "b.hdf5") as b:
        for i in range(3):
            np.testing.assert_array_equal(a.episode(i).actions, b.episode(i).actions)


def test_append_continues_after_the_last_seed(tmp_path):
    out = tmp_path / "d.hdf5"
    collect("sims/Reach-v0", episodes=2, out=out, seed=0, progress=False)
    collect("sims/Reach-v0", episodes=2, out=out, append=True, progress=False)
    with EpisodeReader(out) as reader:
        seeds = [reader.attrs(i)["seed"] for i in range(len(reader))]
    assert len(seeds) == 4 and len(set(seeds)) == 4


def test_a_colour_held_out_of_all_targets_is_never_named(tmp_path):
    out = tmp_path / "lift.hdf5"
    collect("sims/Lift-v0", episodes=6, out=out, seed=0, all_targets=True, targets=["red", "green"], progress=False)
    with EpisodeReader(out) as reader:
        named = {reader.attrs(i)["target"] for i in range(len(reader))}
        instructions = [reader.attrs(i)["instruction"] for i in range(len(reader))]
    assert named == {"red", "green"}
    assert not any("blue" in text for text in instructions)
    with pytest.raises(DatasetError, match="purple"):
        collect("sims/Lift-v0", episodes=1, out=tmp_path / "x.hdf5", all_targets=True, targets=["purple"],
                progress=False)
    with pytest.raises(DatasetError, match="--all-targets"):
        collect("sims/Lift-v0", episodes=1, out=tmp_path / "y.hdf5", targets=["red"], progress=False)


def test_stats_and_info(tmp_path):
    values = np.random.default_rng(0).normal(size=(1000, 3))
    stats = dimension_stats(values)
    assert set(stats) == {"min", "max", "mean", "std", "q01", "q99"}
    assert stats["q01"][0] < stats["mean"][0] < stats["q99"][0]
    out = tmp_path / "x.hdf5"
    collect("sims/Reach-v0", episodes=3, out=out, seed=0, progress=False)
    info = dataset_summary(out)
    assert info["episodes"] == 3 and len(info["action_stats"]["q99"]) == 4


def test_cli_collect_info_video(tmp_path, capsys):
    out = tmp_path / "c.hdf5"
    assert main(["collect", "--task", "sims/Push-v0", "--episodes", "2", "--out", str(out), "--seed", "1000"]) == 0
    assert main(["data", "info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "episodes      2" in printed and "q99" in printed
    video = tmp_path / "v.mp4"
    assert main(["data", "video", str(out), "--episode", "1", "--out", str(video)]) == 0
    assert video.stat().st_size > 1000


def test_cli_bad_input_gives_one_line_errors(tmp_path, capsys):
    assert main(["collect", "--task", "sims/Fly-v0", "--episodes", "1", "--out", str(tmp_path / "x.hdf5")]) == 2
    err = capsys.readouterr().err
    assert "sims/Reach-v0" in err and len(err.strip().splitlines()) == 1

    existing = tmp_path / "exists.hdf5"
    existing.write_bytes(b"")
    assert main(["collect", "--task", "sims/Reach-v0", "--episodes", "1", "--out", str(existing)]) == 2
    assert "--overwrite" in capsys.readouterr().err

    garbage = tmp_path / "garbage.hdf5"
    garbage.write_text("not hdf5")
    assert main(["data", "info", str(garbage)]) == 2
    assert "not an HDF5 file" in capsys.readouterr().err

    good = tmp_path / "good.hdf5"
    collect("sims/Reach-v0", episodes=2, out=good, seed=0, progress=False)
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(good.read_bytes()[:4000])
    assert main(["data", "info", str(truncated)]) == 2
    err = capsys.readouterr().err
    assert "truncated.hdf5" in err and len(err.strip().splitlines()) == 1

    no_data = tmp_path / "nodata.hdf5"
    with h5py.File(no_data, "w") as f:
        f.create_group("other")
    assert main(["data", "info", str(no_data)]) == 2
    assert "data/" in capsys.readouterr().err


def test_interrupted_collection_keeps_finished_episodes(tmp_path):
    out = tmp_path / "interrupted.hdf5"
    cmd = [sys.executable, "-m", "vla.cli", "collect", "--task", "sims/PickPlace-v0", "--episodes", "500",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.2)
        try:  # without file locking: the writer holds the file's lock until it closes it
            with h5py.File(out, "r", locking=False) as f:
                if len(f["data"]) >= 3:
                    break
        except Exception:
            pass  # not created yet, or caught mid-episode; look again
    assert proc.poll() is None, "the collection ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with EpisodeReader(out) as reader:
        assert len(reader) >= 3
        for i in range(len(reader)):
            episode = reader.episode(i)
            assert len(episode) > 0 and episode.attrs["success"]


class StandStill:
    metadata = {"action_dim": 4}

    def reset(self):
        pass

    def act(self, observation):
        return np.zeros((1, 4), np.float32)


class CameraRecorder(StandStill):
    """Stands still and records which cameras each observation brings."""

    def __init__(self, env_args: dict):
        self.metadata = {"action_dim": 4, "env_args": env_args}
        self.cameras: set[tuple[str, ...]] = set()

    def act(self, observation):
        self.cameras.add(tuple(sorted(k for k, v in observation.items() if getattr(v, "ndim", 0) == 3)))
        return super().act(observation)


def test_a_suite_is_evaluated_with_the_cameras_the_policy_was_demonstrated_with(tmp_path):
    """A named suite fixes what it names (here the image size); what it leaves open, the wrist camera, is as
    the policy's data was collected, or a policy that reads two cameras would be handed one."""
    from vla.evaluation import evaluate_suite
    from vla.suites import Suite

    suite = Suite(name="two", tasks=["sims/Reach-v0", "sims/Push-v0"], env_kwargs={"image_size": 32})
    policy = CameraRecorder({"suite": "two", "tasks": suite.tasks,
                             "env_kwargs": {"image_size": 48, "wrist_camera": True}})
    result = evaluate_suite(policy, suite, 1, env_kwargs={"max_episode_steps": 2}, videos=0, progress=False)
    assert policy.cameras == {("image", "wrist_image")}
    for task in suite.tasks:
        assert result["task_env_kwargs"][task] == {"image_size": 32, "wrist_camera": True, "max_episode_steps": 2}


def test_a_store_mixing_tasks_remembers_each_tasks_settings(tmp_path):
    """Stores appended task by task (the built-in multi-task recipe) say how to make every task, so that
    `vla eval --task` / `vla deploy --sim` on one of them use the settings it was demonstrated with."""
    from vla.data.inspect import format_summary
    from vla.data.store import env_kwargs_for
    from vla.evaluation import evaluate_suite
    from vla.suites import data_suite

    out = tmp_path / "mixed.hdf5"
    collect("sims/Reach-v0", episodes=1, out=out, seed=0, progress=False, env_kwargs={"image_size": 32})
    collect("sims/Push-v0", episodes=1, out=out, seed=1, progress=False, append=True,
            env_kwargs={"image_size": 32, "layout": "random"})
    with EpisodeReader(out) as reader:
        env_args = reader.env_args
    assert env_args["env_name"] == "sims/Reach-v0" and env_args["tasks"] == ["sims/Reach-v0", "sims/Push-v0"]
    assert env_kwargs_for(env_args, "sims/Reach-v0")["image_size"] == 32
    assert env_kwargs_for(env_args, "sims/Push-v0").items() >= {"image_size": 32, "layout": "random"}.items()
    assert env_kwargs_for(env_args, "sims/Lift-v0") == {}
    assert env_kwargs_for({"suite": "builtin", "tasks": ["sims/Lift-v0"], "env_kwargs": {"layout": "random"}},
                          "sims/Lift-v0") == {"layout": "random"}  # an older suite store

    # With no suite file, `vla eval` and the training evaluator run every task the store mixes, each as demonstrated
    suite = data_suite(env_args)
    assert suite.tasks == ["sims/Reach-v0", "sims/Push-v0"]
    assert suite.env_kwargs_of("sims/Push-v0") == env_kwargs_for(env_args, "sims/Push-v0")
    assert data_suite({"env_name": "sims/Reach-v0", "tasks": ["sims/Reach-v0"]}) is None
    result = evaluate_suite(StandStill(), suite, 1, env_kwargs={"max_episode_steps": 3}, out_dir=tmp_path / "eval",
                            videos=0, progress=False)
    for task in suite.tasks:
        on_disk = json.loads((tmp_path / "eval" / task.replace("/", "_") / "eval.json").read_text())
        assert on_disk["env_kwargs"] == {**suite.env_kwargs_of(task), "max_episode_steps": 3}
    assert result["task_env_kwargs"] == {task: {**kw, "max_episode_steps": 3} for task, kw in env_args["task_env_kwargs"].items()}
    env_lines = [line for line in format_summary(dataset_summary(out)).splitlines() if "sims/" in line and not line.startswith("tasks")]
    assert len(env_lines) == 2 and "Reach" in env_lines[0] and "Push" in env_lines[1] and "random" in env_lines[1]
