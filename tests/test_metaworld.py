"""Meta-World behind our observation convention (the `metaworld` extra, which `make test` installs)."""

import json

import gymnasium as gym
import numpy as np
import pytest

import sims
from sims.experts import make_expert, run_episode

MT10 = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3"]


class StandStill:
    """A policy that never moves the arm: every episode runs to Meta-World's step limit."""

    metadata = {"action_dim": 4}

    def reset(self):
        pass

    def act(self, observation):
        return np.zeros((2, 4), np.float32)


def test_an_mt10_task_follows_our_observation_convention():
    env = gym.make("metaworld/drawer-open-v3", image_size=48, wrist_camera=True)
    obs, info = env.reset(seed=3)
    assert set(obs) == {"image", "wrist_image", "state"}
    assert obs["image"].shape == (48, 48, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (4,) and obs["state"].dtype == np.float32  # hand xyz and gripper opening only
    np.testing.assert_allclose(obs["state"][:3], env.unwrapped.raw_observation[:3], atol=1e-6)
    assert info["instruction"] in sims.metaworld.instructions("drawer-open-v3") and info["is_success"] is False
    assert env.unwrapped.metadata["action_hold"] == [0.0, 0.0, 0.0, None]
    again, _ = env.reset(seed=3)
    np.testing.assert_array_equal(again["image"], obs["image"])  # a seed is a scene
    env.close()


def test_an_episode_may_run_past_meta_worlds_own_limit():
    env = gym.make("metaworld/reach-v3", image_size=8, max_episode_steps=505)  # Meta-World's own: 500
    env.reset(seed=0)
    for step in range(1, 506):
        *_, terminated, truncated, _ = env.step(np.zeros(4, np.float32))  # standing still: never a success
        assert not terminated and truncated == (step == 505)
    env.close()
    assert gym.make("metaworld/reach-v3", image_size=8).spec.max_episode_steps == sims.metaworld.MAX_STEPS == 500


def test_the_first_frame_shows_the_goal_where_the_episode_put_it():
    """Meta-World moves the goal marker without recomputing the scene; the frame at reset used to show the
    previous episode's goal (and so taught the policy a wrong goal at every episode's first step)."""
    env = gym.make("metaworld/reach-v3", image_size=32)
    inner = env.unwrapped
    for seed in (1, 2):
        env.reset(seed=seed)
        np.testing.assert_allclose(inner._env.data.site("goal").xpos, inner.target_position, atol=1e-6)
        first = inner._render(sims.metaworld.FRONT_CAMERA, 32)
        import mujoco

        mujoco.mj_forward(inner._env.model, inner._env.data)
        np.testing.assert_array_equal(inner._render(sims.metaworld.FRONT_CAMERA, 32), first)
    env.close()


def test_the_corner_camera_can_be_narrowed_from_the_same_pose():
    wide = gym.make("metaworld/reach-v3", image_size=48, camera_fovy=sims.metaworld.META_WORLD_FOVY)
    narrow = gym.make("metaworld/reach-v3", image_size=48)  # 30 degrees
    a, _ = wide.reset(seed=4)
    b, _ = narrow.reset(seed=4)
    np.testing.assert_array_equal(a["state"], b["state"])  # the same scene
    # The narrow view magnifies the middle of the wide one, where the table and the arm are: the dark
    # background around the room (a third of the wide view) mostly leaves the frame.
    background = lambda image: (image.max(-1) < 10).mean()  # noqa: E731
    assert background(b["image"]) < 0.5 * background(a["image"])
    wide.close(), narrow.close()
    with pytest.raises(ValueError, match="camera_fovy"):
        gym.make("metaworld/reach-v3", camera_fovy=0)


def _goal_pixels(inner, camera: str, size: int) -> np.ndarray:
    """[N, 2] (row, col) of the pixels that change when the goal marker is hidden."""
    site = inner._env.model.site("goal")
    shown = inner._render(camera, size).astype(int)
    rgba = site.rgba.copy()
    site.rgba[3] = 0
    hidden = inner._render(camera, size).astype(int)
    site.rgba[:] = rgba
    return np.argwhere(np.abs(shown - hidden).sum(-1) > 30)


def _projection(inner, camera: str, point: np.ndarray, size: int) -> np.ndarray:
    """(row, col) of a world point in the env's image of the named camera: a pinhole camera with the model's
    field of view, turned 180 degrees as the env turns Meta-World's upside-down corner cameras."""
    import mujoco

    data, model = inner._env.data, inner._env.model
    index = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    local = (point - data.cam_xpos[index]) @ data.cam_xmat[index].reshape(3, 3)  # x right, y up, looking along -z
    focal = size / 2 / np.tan(np.radians(model.cam_fovy[index]) / 2)
    pinhole = np.array([size / 2 - focal * local[1] / -local[2], size / 2 + focal * local[0] / -local[2]])
    return size - pinhole


def test_the_side_camera_sees_the_goal_from_the_other_corner_the_right_way_up():
    """The goal marker appears where the narrowed, turned camera puts it, in each view, and a point above it
    appears above it: the world's up is the image's up."""
    env = gym.make("metaworld/reach-v3", image_size=96, side_camera=True)
    obs, _ = env.reset(seed=5)
    inner = env.unwrapped
    assert set(obs) == {"image", "side_image", "state"} and obs["side_image"].shape == (96, 96, 3)
    for camera in (sims.metaworld.FRONT_CAMERA, sims.metaworld.SIDE_CAMERA):
        pixels = _goal_pixels(inner, camera, 96)
        assert len(pixels) >= 3, camera
        goal = inner.target_position
        expected = _projection(inner, camera, goal, 96)
        assert np.abs(pixels.mean(0) - expected).max() < 2.0, (camera, pixels.mean(0), expected)
        above = _projection(inner, camera, goal + np.array([0.0, 0.0, 0.1]), 96)
        assert above[0] < expected[0] - 5, camera
    env.close()


def test_every_seed_draws_its_own_layout():
    env = gym.make("metaworld/push-v3", image_size=32).unwrapped
    layouts = set()
    for seed in range(60):
        env.reset(seed=seed)
        layouts.add(tuple(np.round(env.raw_observation[4:7], 5)) + tuple(np.round(env.raw_observation[-3:], 5)))
    assert len(layouts) == 60  # not the benchmark's 50 frozen presets
    env.close()


@pytest.mark.parametrize("task", MT10)
def test_the_shipped_expert_solves_the_task(task):
    env = gym.make(f"metaworld/{task}", image_size=32)
    expert = make_expert(env)
    successes = 0
    for seed in range(2):
        for _, action, _, terminated, truncated, info in run_episode(env, expert, seed):
            assert action.shape == (4,) and np.all(np.abs(action) <= 1)
        successes += info["is_success"]
        assert terminated == info["is_success"]  # an episode ends at its first success
    env.close()
    assert successes == 2


@pytest.mark.parametrize("task", sims.metaworld.FINGERTIP_GOAL_TASKS)
def test_the_reach_expert_brings_the_fingertips_to_the_goal(task):
    """Success is the fingertips within 5 cm of the goal; Meta-World's expert alone parks the hand's reference
    point, 4.7 cm above them, on the goal, so its demonstrations would end on the edge of the success region."""
    env = gym.make(f"metaworld/{task}", image_size=16).unwrapped
    expert = make_expert(env)
    for seed in range(2):
        env.reset(seed=seed)
        for _ in range(150):  # past the first success, which would end the episode
            env.step(expert.act())
        assert np.linalg.norm(env._env.tcp_center - env.target_position) < 0.01
        assert np.linalg.norm(env.raw_observation[:3] - env.target_position) > 0.03  # the hand sits above it
    env.close()


def test_bad_task_and_suite_names_list_the_valid_ones(monkeypatch):
    from vla.errors import ConfigError
    from vla.suites import load_suite

    with pytest.raises(ValueError, match="unknown Meta-World task 'fly-v3'; valid tasks: .*metaworld/reach-v3"):
        sims.check_env_id("metaworld/fly-v3")
    with pytest.raises(ConfigError, match="no suites config named 'mt99'; known: builtin, metaworld-mt10"):
        load_suite("mt99")
    monkeypatch.setattr(sims, "metaworld_available", lambda: False)
    with pytest.raises(sims.MissingExtra, match=r"pip install 'vla-robotics\[metaworld\]'"):
        sims.check_env_id("metaworld/reach-v3")


def test_vla_names_the_missing_extra_in_one_line(monkeypatch, capsys):
    from vla.cli import main

    monkeypatch.setattr(sims, "metaworld_available", lambda: False)
    assert main(["collect", "--task", "metaworld/reach-v3", "--episodes", "1", "--out", "/tmp/never.hdf5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "vla-robotics[metaworld]" in err


def test_a_suite_collects_into_one_store_and_evaluates_into_one_eval_json(tmp_path):
    from vla.data.collect import collect_suite
    from vla.data.store import EpisodeReader
    from vla.evaluation import evaluate_suite
    from vla.suites import Suite

    suite = Suite("mini", ["metaworld/reach-v3", "metaworld/drawer-close-v3"], {"image_size": 32},
                  difficulty={"easy": ["metaworld/reach-v3", "metaworld/drawer-close-v3"]})
    summary = collect_suite(suite, 2, tmp_path / "mt.hdf5", workers=1, progress=False)
    assert summary["episodes_in_file"] == 4
    with EpisodeReader(tmp_path / "mt.hdf5") as reader:
        assert sorted({reader.attrs(i)["task"] for i in range(4)}) == sorted(suite.tasks)
        assert reader.env_args["suite"] == "mini" and reader.action_space["hold"] == [0.0, 0.0, 0.0, None]
        # Each task's settings as it ran, defaults included: the store keeps its view if a default changes
        from sims.metaworld import FRONT_CAMERA_FOVY

        for task in suite.tasks:
            settings = reader.env_args["task_env_kwargs"][task]
            assert settings["image_size"] == 32 and settings["camera_fovy"] == FRONT_CAMERA_FOVY
            assert not {"task", "render_mode", "render_size", "max_episode_steps"} & set(settings)

    result = evaluate_suite(StandStill(), suite, 2, seed=100_000, env_kwargs={"max_episode_steps": 10},
                            out_dir=tmp_path / "eval", videos=1, progress=False)
    on_disk = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert on_disk["suite"] == "mini" and set(on_disk["tasks"]) == set(suite.tasks)
    for row in on_disk["tasks"].values():
        assert row["num_episodes"] == 2 and row["seeds"] == [100_000, 100_001] and 0 <= row["success_rate"] <= 1
        assert len(row["ci95"]) == 2
    assert result["average_success_rate"] == np.mean([r["success_rate"] for r in on_disk["tasks"].values()])
    assert set(on_disk["difficulty"]) == {"easy"}
    assert (tmp_path / "eval" / "metaworld_reach-v3" / "eval.json").exists()


def test_an_idle_env_is_never_stepped_past_its_end():
    """Three 500-step episodes on two envs: while the third runs, the other env has none left and is stepped
    with it, 500 steps past its own end; Meta-World refuses that (it crashed the MT10 recipe's evaluation
    during training), so the evaluator resets an env when it has no episode left."""
    from vla.evaluation import evaluate

    result = evaluate(StandStill(), "metaworld/reach-v3", 3, seed=100_000, workers=2, videos=0, progress=False,
                      env_kwargs={"image_size": 24})  # 500-step episodes: Meta-World's own limit is 501 steps
    assert result["num_episodes"] == 3 and [r["steps"] for r in result["episodes"]] == [500, 500, 500]
