import gymnasium as gym
import numpy as np
import pytest

import sims
from sims.experts import OPEN, MisreadCube, make_expert, run_episode

ENV_IDS = list(sims.ENV_SPECS)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_observation_and_info_follow_the_documented_api(env_id):
    env = gym.make(env_id, render_mode="rgb_array", wrist_camera=True, image_size=96)
    obs, info = env.reset(seed=3)
    assert obs["image"].shape == (96, 96, 3) and obs["image"].dtype == np.uint8
    assert obs["wrist_image"].shape == (96, 96, 3)
    assert obs["state"].shape == (4,) and obs["state"].dtype == np.float32
    assert env.observation_space.contains(obs)
    assert info["instruction"] == env.unwrapped.instruction
    assert info["target"] in info["instruction"]
    assert info["is_success"] is False
    frame = env.render()
    assert frame.shape == (96, 96, 3)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert isinstance(reward, float) and "is_success" in info
    env.close()


def _steps_until_the_end(env) -> int:
    env.reset(seed=0)
    for step in range(1, 10_000):
        *_, terminated, truncated, _ = env.step(np.zeros(env.action_space.shape, np.float32))
        if terminated or truncated:
            return step
    raise AssertionError("the episode never ended")


def test_episode_length_is_the_tasks_unless_gym_make_is_given_another():
    # Standing still never succeeds, so the episode runs to its time limit: the task's by default, and
    # gym.make's max_episode_steps, longer or shorter, otherwise (the env must not cut a longer one short).
    assert _steps_until_the_end(gym.make("sims/Reach-v0", image_size=16)) == sims.TASKS["reach"].max_steps == 40
    assert _steps_until_the_end(gym.make("sims/Reach-v0", image_size=16, max_episode_steps=65)) == 65
    assert _steps_until_the_end(gym.make("sims/Reach-v0", image_size=16, max_episode_steps=7)) == 7


def test_same_seed_gives_the_same_episode():
    def rollout(seed):
        env = gym.make("sims/Push-v0")
        obs, info = env.reset(seed=seed)
        frames, states = [obs["image"]], [obs["state"]]
        rng = np.random.default_rng(0)
        for _ in range(10):
            obs, *_ = env.step(rng.uniform(-1, 1, 4))
            frames.append(obs["image"])
            states.append(obs["state"])
        env.close()
        return info["instruction"], np.stack(frames), np.stack(states)

    a, b, c = rollout(7), rollout(7), rollout(8)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])
    assert not np.array_equal(a[2], c[2])


def test_instruction_names_different_objects_across_seeds():
    env = gym.make("sims/Reach-v0")
    targets, phrasings = set(), set()
    for seed in range(30):
        _, info = env.reset(seed=seed)
        targets.add(info["target"])
        phrasings.add(info["instruction"].replace(info["target"], "{c}"))
    assert targets == {"red", "green", "blue"}
    assert len(phrasings) >= 3


def test_gripper_moves_as_commanded():
    env = gym.make("sims/Reach-v0")
    obs, _ = env.reset(seed=0)
    start = obs["state"][:3].copy()
    for _ in range(3):
        obs, *_ = env.step(np.array([1.0, 0.0, 0.0, -1.0]))
    moved = obs["state"][:3] - start
    assert 0.06 < moved[0] < 0.1 and abs(moved[1]) < 0.005 and abs(moved[2]) < 0.005
    for _ in range(5):
        obs, *_ = env.step(np.array([0.0, 0.0, 0.0, 1.0]))
    assert obs["state"][3] < 0.005  # closed


@pytest.mark.parametrize("bad", [np.zeros(3), np.array([np.nan, 0, 0, 0])])
def test_bad_actions_are_refused(bad):
    env = gym.make("sims/Reach-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError):
        env.step(bad)


def test_unknown_task_lists_valid_ones():
    with pytest.raises(ValueError, match="sims/Reach-v0"):
        sims.check_env_id("sims/Fly-v0")
    with pytest.raises(ValueError, match="reach"):
        sims.TabletopEnv(task="fly")


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_scripted_expert_succeeds_on_95_percent_of_seeds(env_id):
    env = gym.make(env_id)
    expert = make_expert(env)
    successes = 0
    for seed in range(100):
        *_, (obs, action, reward, terminated, truncated, info) = run_episode(env, expert, seed)
        successes += info["is_success"]
    env.close()
    assert successes >= 95, f"{env_id}: expert succeeded on {successes}/100 seeds"


@pytest.mark.parametrize("env_id", ["sims/Push-v0", "sims/Lift-v0", "sims/PickPlace-v0"])
def test_experts_succeed_on_a_cube_read_with_a_policys_error(env_id):
    """A policy reads the cube from a 64 px image to within about a centimetre, and imitates its expert: an expert
    that needs a sharper reading teaches it to hover. Read 10 mm off per axis at every step, these experts
    succeeded 20 (19 before Push's funnel kept clear of the cube's top), 15 and 17 times in 20; with the sharp gates
    they had before, 1, 7 and 7
    (`benchmarks/grasp_precision.py --task T --jitter 10 --seed 0 --episodes 20 --env-kw image_size=32`)."""
    env = gym.make(env_id, image_size=32, layout="random")
    successes = 0
    for seed in range(20):
        expert = make_expert(env)
        expert.env = MisreadCube(env.unwrapped, spread=0.010, rng=np.random.default_rng(seed))
        *_, (obs, action, reward, terminated, truncated, info) = run_episode(env, expert, seed)
        successes += info["is_success"]
    env.close()
    assert successes >= 13, f"{env_id}: {successes}/20 with the cube read 10 mm off per axis"


def test_push_expert_does_not_come_to_rest_on_the_cube():
    """The expert's funnel onto the spot behind the cube once let the tool down onto the cube's top edge when it came
    in over the cube, and it stayed there pressing down: 2 of seeds 0..199 lost, one won only at step 61. Over the
    cube, the funnel now keeps the tool above the cube's top: 200 of 200 in at most 39 steps. (Trained policies
    dither on the cube's top too, with either expert: docs/builtin-suite-history.md, "Time is not what limits
    Push".)"""
    env = gym.make("sims/Push-v0", image_size=16, layout="random")
    expert = make_expert(env)
    slow_or_lost = []
    for seed in range(200):
        *_, (obs, action, reward, terminated, truncated, info) = run_episode(env, expert, seed)
        if not info["is_success"] or info["success_step"] >= 45:
            slow_or_lost.append((seed, info["success_step"]))
    env.close()
    assert not slow_or_lost, f"(seed, step of success) lost or slower than 45 steps: {slow_or_lost}"


@pytest.mark.parametrize("env_id", ["sims/Lift-v0", "sims/PickPlace-v0"])
def test_a_missed_grasp_is_executed_but_the_labels_show_the_recovery(env_id):
    """With recoveries=1 every episode's gripper first closes where the expert's own label says to stay open
    (its grasp aimed 15-25 mm off the cube); the labels from there bring it back, and the episode still succeeds."""
    env = gym.make(env_id, image_size=32, layout="random")
    inner = env.unwrapped
    successes = 0
    for seed in range(10):
        label_as_it_closes = None
        for obs, label, *_, info in run_episode(env, make_expert(env), seed, recoveries=1.0):
            if label_as_it_closes is None and inner.gripper_opening < 0.075:  # fully open is 0.08
                label_as_it_closes = label[3]
        assert info["recovery"] and label_as_it_closes == OPEN, f"seed {seed}"
        successes += info["is_success"]
    env.close()
    assert successes >= 9, f"{env_id}: {successes}/10 recovered from the missed grasp"


def test_a_misdirected_push_is_executed_but_the_labels_show_the_recovery():
    """With recoveries=1 Push's cube first leaves its start well off the line to the zone (the executed push aimed
    15-35 degrees off), while the labels, the expert's own, push toward the zone; the episode still succeeds."""
    env = gym.make("sims/Push-v0", image_size=32, layout="random")
    inner = env.unwrapped
    successes, angles = 0, []
    for seed in range(10):
        start = None
        for obs, label, *_, info in run_episode(env, make_expert(env), seed, recoveries=1.0):
            cube = inner.object_position(inner.target)[:2]
            if start is None:
                start, to_zone = cube.copy(), inner.zone - cube
            elif len(angles) == seed and np.linalg.norm(cube - start) > 0.03:
                moved = cube - start
                angles.append(np.degrees(np.arccos(moved @ to_zone / np.linalg.norm(moved) / np.linalg.norm(to_zone))))
        assert info["recovery"], f"seed {seed}"
        successes += info["is_success"]
    env.close()
    assert np.median(angles) > 10, f"first 3 cm off the zone's direction: {np.round(angles)} degrees"
    assert successes >= 9, f"{successes}/10 recovered from the misdirected push"


def test_recoveries_leave_reach_and_unperturbed_episodes_alone():
    for env_id, share in (("sims/Reach-v0", 1.0), ("sims/Push-v0", 0.0), ("sims/Lift-v0", 0.0)):
        env = gym.make(env_id, image_size=32, layout="random")
        # With noise, so that a draw from the episode's generator would change the states and the labels.
        plain = [row[1] for row in run_episode(env, make_expert(env), seed=4, noise=0.2)]
        rows = list(run_episode(env, make_expert(env), seed=4, noise=0.2, recoveries=share))  # Reach: nothing to go wrong
        env.close()
        assert not rows[-1][-1]["recovery"]
        np.testing.assert_array_equal(np.stack(plain), np.stack([row[1] for row in rows]))


def test_an_expert_episode_can_go_on_past_its_first_success():
    env = gym.make("sims/Lift-v0", image_size=32)
    expert = make_expert(env)
    short = list(run_episode(env, expert, seed=3))
    longer = list(run_episode(env, expert, seed=3, after_success=7))
    env.close()
    first = short[-1][-1]["success_step"]
    assert first == len(short) - 1 and len(longer) == len(short) + 7
    for (obs_a, action_a, *_), (obs_b, action_b, *_) in zip(short, longer):  # the same episode up to there
        np.testing.assert_array_equal(obs_a["image"], obs_b["image"])
        np.testing.assert_array_equal(action_a, action_b)
    assert [row[3] for row in longer] == [False] * (len(longer) - 1) + [True]  # terminated once, at the end
    assert not any(row[4] for row in longer)
    assert all(row[-1]["is_success"] for row in longer[first:]) and longer[-1][-1]["success_step"] == first


def test_layout_of_seed_is_the_layout_reset_draws():
    env = gym.make("sims/Push-v0", image_size=32).unwrapped
    for seed in (0, 7, 123):
        layout = env.layout_of_seed(seed)
        env.reset(seed=seed)
        assert layout.target == env.target and set(layout.object_xy) == set(env.placed_colors)
        for color, xy in layout.object_xy.items():
            np.testing.assert_allclose(env.object_position(color)[:2], xy, atol=1e-9)
    env.close()
