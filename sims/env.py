"""`TabletopEnv`: the Gymnasium environment shared by every task.

Action (float32, 4): delta x, y, z of the tool centre point in [-1, 1] (scaled by `max_step` metres per
control step) and the gripper command in [-1, 1] (-1 open, +1 closed), Meta-World's convention.

Observation dict:
    image        uint8 [H, W, 3]  front camera
    wrist_image  uint8 [H, W, 3]  wrist camera (only with `wrist_camera=True`)
    state        float32 [4]      tool centre point x, y, z (m), gripper opening (m)

`info` holds `instruction`, `target` (the named object's colour), `task` and `is_success`.
`reset(seed=s, options={"target": "red"})` keeps seed s's layout but names the given object.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import sys
import weakref

if sys.platform.startswith("linux"):
    os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import mujoco
import numpy as np

from sims.scene import (
    COLORS,
    CUBE_HALF,
    FINGER_TRAVEL,
    HOME_TCP_Z,
    TCP_HIGH,
    TCP_LOW,
    TIMESTEP,
    SceneSpec,
    build_scene_xml,
)
from sims.tasks import LAYOUTS, TASKS, Layout

STATE_DIM = 4
ACTION_DIM = 4
# What each action dimension is, and what standing still means for it: deltas hold at 0, the
# gripper command is absolute (holding repeats it). Collection records this with the data.
ACTION_NAMES = ("dx", "dy", "dz", "gripper")
ACTION_HOLD = (0.0, 0.0, 0.0, None)


def _close_at_exit(renderer: mujoco.Renderer) -> None:
    """Free the GL context before MuJoCo's own exit handler tears EGL down (exit handlers run last
    registered, first run); freed later, during interpreter teardown, it prints EGL errors."""
    ref = weakref.ref(renderer)

    def close() -> None:
        live = ref()
        if live is not None:
            live.close()

    atexit.register(close)


class TabletopEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10, "action_names": list(ACTION_NAMES),
                "action_hold": list(ACTION_HOLD)}

    def __init__(
        self,
        task: str = "reach",
        render_mode: str | None = None,
        image_size: int = 128,
        wrist_camera: bool = False,
        num_objects: int = 3,
        num_colors: int | None = None,
        layout: str = "random",
        control_hz: int = 10,
        max_step: float = 0.03,
        success_tolerance: float | None = None,
        render_size: int | None = None,
    ):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(sorted(TASKS))}")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
        num_colors = num_colors or max(num_objects, 3)
        if not 1 <= num_objects <= num_colors <= len(COLORS):
            raise ValueError(f"need 1 <= num_objects <= num_colors <= {len(COLORS)}, got {num_objects} and {num_colors}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.task = TASKS[task]
        if success_tolerance is not None:
            self.task = dataclasses.replace(self.task, success_tolerance=success_tolerance)
        self.render_mode = render_mode
        self.image_size = image_size
        self.render_size = render_size or image_size  # render() for videos may be larger than observations
        self.wrist_camera = wrist_camera
        self.layout_kind = layout
        self.max_step = max_step
        self.colors = tuple(COLORS)[:num_colors]  # cubes in the scene; num_objects of them on the table
        self.num_objects = num_objects
        self.metadata = {**self.metadata, "render_fps": control_hz}
        self.frame_skip = round(1.0 / (control_hz * TIMESTEP))

        spec = SceneSpec(object_colors=self.colors, image_size=max(image_size, self.render_size),
                         show_zone=self.task.needs_zone)
        self.model = mujoco.MjModel.from_xml_string(build_scene_xml(spec))
        self.data = mujoco.MjData(self.model)
        self._renderers: dict[int, mujoco.Renderer] = {}
        self._tcp_site = self.model.site("tcp").id
        self._zone_body = self.model.body("zone").id
        self._slide_qpos = [self.model.joint(f"slide_{a}").qposadr[0] for a in "xyz"]
        self._finger_qpos = [self.model.joint(f"finger_{s}").qposadr[0] for s in ("left", "right")]
        self._cube_qpos = {c: self.model.joint(f"cube_{c}_joint").qposadr[0] for c in self.colors}
        self._cube_body = {c: self.model.body(f"cube_{c}").id for c in self.colors}

        image_space = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        spaces = {"image": image_space, "state": gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32)}
        if wrist_camera:
            spaces["wrist_image"] = image_space
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

        self._layout: Layout | None = None

    # ----- privileged state (tasks and scripted experts read these) -----
    @property
    def tcp(self) -> np.ndarray:
        return self.data.site_xpos[self._tcp_site].copy()

    @property
    def gripper_opening(self) -> float:
        return float(sum(self.data.qpos[i] for i in self._finger_qpos))

    def object_position(self, color: str) -> np.ndarray:
        return self.data.xpos[self._cube_body[color]].copy()

    @property
    def target_position(self) -> np.ndarray:
        """Privileged: the named cube's position (recorded for auxiliary losses, never a policy input)."""
        return self.object_position(self.target).astype(np.float32)

    @property
    def zone(self) -> np.ndarray:
        return self.model.body_pos[self._zone_body][:2].copy()

    @property
    def placed_colors(self) -> tuple[str, ...]:
        """The cubes on the table this episode."""
        return tuple(self._layout.object_xy)

    @property
    def target(self) -> str:
        return self._layout.target

    @property
    def instruction(self) -> str:
        if self._layout is None:
            raise RuntimeError("call reset() before reading the instruction")
        return self.task.instruction(self._layout)

    def layout_of_seed(self, seed: int) -> Layout:
        """The scene `reset(seed=seed)` lays out (before any `options["target"]`), without resetting."""
        rng, _ = gym.utils.seeding.np_random(seed)
        return self._draw_layout(rng)

    def _draw_layout(self, rng: np.random.Generator) -> Layout:
        return self.task.sample_layout(rng, self.colors, self.layout_kind, self.num_objects)

    # ----- Gymnasium API -----
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._layout = self._draw_layout(self.np_random)
        target = (options or {}).get("target")
        if target is not None:
            if target not in self._layout.object_xy:
                raise ValueError(f"options['target'] must be one of {sorted(self._layout.object_xy)}, got {target!r}")
            self._layout = dataclasses.replace(self._layout, target=target)
        mujoco.mj_resetData(self.model, self.data)
        for i, color in enumerate(self.colors):
            adr = self._cube_qpos[color]
            if color in self._layout.object_xy:
                x, y = self._layout.object_xy[color]
                yaw = self._layout.object_yaw[color]
                self.data.qpos[adr : adr + 7] = [x, y, CUBE_HALF, np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]
            else:  # off the table, out of every camera's view
                self.data.qpos[adr : adr + 7] = [1.5 + 0.1 * i, 1.5, CUBE_HALF - 0.75, 1, 0, 0, 0]
        self.model.body_pos[self._zone_body][:2] = self._layout.zone_xy
        start = self._layout.tcp_start
        self.data.qpos[self._slide_qpos] = start - np.array([0.0, 0.0, HOME_TCP_Z])
        self.data.qpos[self._finger_qpos] = FINGER_TRAVEL
        self._set_controls(start, gripper_command=-1.0)
        mujoco.mj_forward(self.model, self.data)
        return self._observation(), self._info(success=False)

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action must have shape ({ACTION_DIM},), got {np.shape(action)}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action must be finite, got {action}")
        if self._layout is None:
            raise RuntimeError("call reset() before step()")
        action = np.clip(action, -1.0, 1.0)
        # Deltas are taken from where the gripper is, not from the last command, so a blocked
        # gripper does not wind up its set point (Meta-World does the same with its mocap).
        self._set_controls(self.tcp + action[:3] * self.max_step, gripper_command=action[3])
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        success = self.task.is_success(self)
        return self._observation(), float(success), success, False, self._info(success)

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self._render_camera("front", self.render_size)

    def close(self):
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()

    # ----- internals -----
    def _set_controls(self, tcp_goal: np.ndarray, gripper_command: float) -> None:
        goal = np.clip(tcp_goal, TCP_LOW, TCP_HIGH)
        self.data.ctrl[:3] = goal - np.array([0.0, 0.0, HOME_TCP_Z])
        self.data.ctrl[3:5] = FINGER_TRAVEL * (1.0 - float(gripper_command)) / 2.0

    def _observation(self) -> dict[str, np.ndarray]:
        obs = {
            "image": self._render_camera("front"),
            "state": np.append(self.tcp, self.gripper_opening).astype(np.float32),
        }
        if self.wrist_camera:
            obs["wrist_image"] = self._render_camera("wrist")
        return obs

    def _info(self, success: bool) -> dict:
        return {
            "instruction": self.instruction,
            "target": self.target,
            "task": self.task.name,
            "is_success": bool(success),
        }

    def _render_camera(self, camera: str, size: int | None = None) -> np.ndarray:
        size = size or self.image_size
        renderer = self._renderers.get(size)
        if renderer is None:
            renderer = self._renderers[size] = mujoco.Renderer(self.model, size, size)
            _close_at_exit(renderer)
            flags = renderer.scene.flags
            flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
        renderer.update_scene(self.data, camera=camera)
        return renderer.render()
