"""Meta-World v3 tasks behind this package's observation convention (needs the `metaworld` extra).

    import gymnasium as gym
    import sims                                  # registers metaworld/<task> when metaworld is installed
    env = gym.make("metaworld/reach-v3", image_size=96)
    obs, info = env.reset(seed=0)                # obs: image uint8 [96, 96, 3], state float32 [4]

- `image`: a fixed corner camera (`corner2`, which Meta-World renders upside down: turned the right way
  up here), its field of view narrowed from 60 to 30 degrees onto the workspace (`camera_fovy`);
  `side_image` (Meta-World's `corner`, from the opposite front corner, narrowed the same way) with
  `side_camera=True`: one view cannot tell how far along its line of sight a floating goal is, two can;
  `wrist_image` (Meta-World's `gripperPOV`) with `wrist_camera=True`.
- `state`: the hand's position and the gripper's opening (0-1): what a real arm reports. The object and
  goal poses in Meta-World's 39-d observation are privileged: only the scripted experts read them.
- Every reset seed draws its own random layout from the task's reset space, deterministically (Meta-World's
  benchmarks freeze 50 presets per task; their `reset(seed=...)` does not choose among them).
- 500 steps; an episode ends at its first success (`info["is_success"]`).
- Rendering as the built-in sims do it: no shadows, reflections, skybox or multisampling.
"""

from __future__ import annotations

import sys
import warnings

import gymnasium as gym
import mujoco
import numpy as np

from sims.env import _close_at_exit

MAX_STEPS = 500
FRONT_CAMERA = "corner2"
# Meta-World's corner2 sees the whole room at 60 degrees, but every MT10 task's hand, object and goal stay
# within the middle third of that view (benchmarks/metaworld_framing.py): at 96 px the goal marker is 1-2 px.
# Narrowed to 30 degrees from the same pose, the workspace fills the frame and every object is twice as large,
# and a ViT trained from scratch reads the goal's position with about half the error
# (benchmarks/metaworld_goal_localization.py).
META_WORLD_FOVY = 60.0
FRONT_CAMERA_FOVY = 30.0
# The other front corner: its line of sight is nearly perpendicular to corner2's across the table (cosine -0.07).
# Rendered upside down too; at 30 degrees every MT10 hand, object and goal stays within 0.64 of the frame's
# half-width (benchmarks/metaworld_framing.py --camera corner).
SIDE_CAMERA = "corner"
UPSIDE_DOWN_CAMERAS = (FRONT_CAMERA, SIDE_CAMERA)
WRIST_CAMERA = "gripperPOV"
CONTROL_HZ = 80  # Meta-World steps MuJoCo 5 x 2.5 ms per action
# Several phrasings per task; the first is Meta-World's own task description.
INSTRUCTIONS = {
    "reach-v3": ("reach the goal position", "move the gripper to the target point", "reach toward the goal"),
    "push-v3": ("push the puck to the goal", "slide the puck to the target", "push the puck onto the goal"),
    "pick-place-v3": ("pick up the puck and place it at the goal", "pick and place the puck at the target",
                      "grasp the puck and put it on the goal"),
    "door-open-v3": ("open the door", "pull the door open", "swing the door open"),
    "drawer-open-v3": ("open the drawer", "pull the drawer open", "pull out the drawer"),
    "drawer-close-v3": ("close the drawer", "push the drawer closed", "push the drawer shut"),
    "button-press-topdown-v3": ("press the button from the top", "push the button down",
                                "press down on the button"),
    "peg-insert-side-v3": ("insert the peg into the hole from the side", "put the peg in the hole",
                           "slide the peg into the side hole"),
    "window-open-v3": ("open the window", "slide the window open", "push the window open"),
    "window-close-v3": ("close the window", "slide the window closed", "push the window shut"),
}


def task_names() -> list[str]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return sorted(ALL_V3_ENVIRONMENTS)


def instructions(task: str) -> tuple[str, ...]:
    """The phrasings of a task; tasks without written ones get Meta-World's name as a sentence."""
    return INSTRUCTIONS.get(task) or (task.removesuffix("-v3").replace("-", " "),)


class MetaWorldEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ,
                "action_names": ["dx", "dy", "dz", "gripper"], "action_hold": [0.0, 0.0, 0.0, None]}

    def __init__(self, task: str = "reach-v3", render_mode: str | None = None, image_size: int = 96,
                 wrist_camera: bool = False, render_size: int | None = None,
                 camera_fovy: float = FRONT_CAMERA_FOVY, side_camera: bool = False):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        if task not in ALL_V3_ENVIRONMENTS:
            raise ValueError(f"unknown Meta-World task {task!r}; valid tasks: {', '.join(sorted(ALL_V3_ENVIRONMENTS))}")
        if not 0 < camera_fovy < 180:
            raise ValueError(f"camera_fovy must be in (0, 180) degrees, got {camera_fovy}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.task, self.render_mode = task, render_mode
        self.image_size, self.render_size = image_size, render_size or image_size
        self.wrist_camera = wrist_camera
        env = ALL_V3_ENVIRONMENTS[task]()
        # A task of our own: a fresh layout from the task's reset space on every seeded reset, and the goal
        # in the (privileged) observation, which the scripted experts read.
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env._set_task_called = True
        env._partially_observable = False
        env.__dict__.pop("sawyer_observation_space", None)  # a cached property that depends on observability
        # gym.make's TimeLimit ends our episodes (MAX_STEPS unless told otherwise); Meta-World's own limit must
        # not end them first (it refuses to step past it).
        env.max_path_length = sys.maxsize
        env.model.vis.quality.offsamples = 0  # no multisampling, no shadow maps: 10x faster offscreen rendering
        env.model.vis.quality.shadowsize = 0
        for camera in UPSIDE_DOWN_CAMERAS:
            env.model.cam_fovy[mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)] = camera_fovy
        self.camera_fovy, self.side_camera = camera_fovy, side_camera
        self._env = env
        self._renderers: dict[int, mujoco.Renderer] = {}
        image = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        spaces = {"image": image, "state": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)}
        if side_camera:
            spaces["side_image"] = image
        if wrist_camera:
            spaces["wrist_image"] = image
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.raw_observation = np.zeros(39)
        self._phrasing = 0
        self._succeeded = False

    @property
    def instruction(self) -> str:
        return instructions(self.task)[self._phrasing]

    @property
    def target(self) -> str:
        return self.task

    @property
    def target_position(self) -> np.ndarray:
        """Privileged: where the task's object is (the goal for reach), for auxiliary losses only."""
        position = self.raw_observation[-3:] if self.task.startswith("reach") else self.raw_observation[4:7]
        return np.asarray(position, np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # Meta-World's reset ignores its seed argument; its own seed() seeds the layout draw.
        self._env.seed(int(self.np_random.integers(2**31)) if seed is None else seed)
        self._phrasing = int(self.np_random.integers(len(instructions(self.task))))
        self.raw_observation, _ = self._env.reset()
        # Meta-World moves the goal marker in the model (site_pos) without recomputing the scene, so the
        # first frame would show the previous episode's goal; forward kinematics puts it where it now is.
        mujoco.mj_forward(self._env.model, self._env.data)
        self._succeeded = False
        return self._observation(), self._info()

    def step(self, action):
        action = np.clip(np.asarray(action, np.float64).reshape(-1), -1.0, 1.0)
        if action.shape != (4,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action must be 4 finite values, got {action}")
        self.raw_observation, reward, _, _, info = self._env.step(action)
        self._succeeded = bool(info.get("success", 0.0) > 0)
        return self._observation(), float(reward), self._succeeded, False, self._info()

    def render(self):
        return self._render(FRONT_CAMERA, self.render_size) if self.render_mode == "rgb_array" else None

    def close(self):
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
        self._env.close()

    def _observation(self) -> dict:
        raw = self.raw_observation
        obs = {"image": self._render(FRONT_CAMERA, self.image_size), "state": np.append(raw[:3], raw[3]).astype(np.float32)}
        if self.side_camera:
            obs["side_image"] = self._render(SIDE_CAMERA, self.image_size)
        if self.wrist_camera:
            obs["wrist_image"] = self._render(WRIST_CAMERA, self.image_size)
        return obs

    def _info(self) -> dict:
        return {"instruction": self.instruction, "target": self.task, "task": self.task, "is_success": self._succeeded}

    def _render(self, camera: str, size: int) -> np.ndarray:
        renderer = self._renderers.get(size)
        if renderer is None:
            renderer = self._renderers[size] = mujoco.Renderer(self._env.model, size, size)
            _close_at_exit(renderer)
            flags = renderer.scene.flags
            flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
        renderer.update_scene(self._env.data, camera=camera)
        image = renderer.render()
        return np.ascontiguousarray(image[::-1, ::-1]) if camera in UPSIDE_DOWN_CAMERAS else image


# Tasks whose success is the fingertips' centre (`tcp_center`) within 5 cm of the goal, while Meta-World's expert
# drives the hand's reference point, about 4.7 cm above the fingertips, to the goal: its demonstrations end on the
# edge of the success region, so an imitation a centimetre off misses (benchmarks/metaworld_reach_tolerance.py).
FINGERTIP_GOAL_TASKS = ("reach-v3", "reach-wall-v3")


class MetaWorldExpert:
    """Meta-World's own scripted policy for the task (`metaworld.policies`), reading the privileged
    39-d observation; act() -> float32 [4]. For `FINGERTIP_GOAL_TASKS` the policy is shown the goal moved by the
    hand-to-fingertips offset, so that it brings the fingertips, not the hand, to the goal: the centre of the
    success region instead of its edge."""

    def __init__(self, env):
        from metaworld.policies import ENV_POLICY_MAP

        # The experts warn on every step whose raw response exceeds [-1, 1]; act() clips it, as the env would.
        warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", category=UserWarning)
        self.env: MetaWorldEnv = env.unwrapped
        self.policy = ENV_POLICY_MAP[self.env.task]()

    def reset(self) -> None:
        """Meta-World's experts keep no state between steps."""

    def act(self, observation=None) -> np.ndarray:
        raw = self.env.raw_observation
        if self.env.task in FINGERTIP_GOAL_TASKS:
            raw = raw.copy()
            raw[-3:] -= self.env._env.tcp_center - raw[:3]
        return np.clip(self.policy.get_action(raw), -1.0, 1.0).astype(np.float32)
