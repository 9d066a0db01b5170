"""Tasks: how a scene is laid out at reset, what the instruction says, and when it succeeded.

A task never touches MuJoCo directly; it reads the privileged state the environment exposes
(`env.tcp`, `env.object_position(color)`, `env.zone`, `env.gripper_opening`).
Each instruction names one object out of several, so a policy has to read it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

from sims.scene import CUBE_HALF, TABLE_HIGH, TABLE_LOW, ZONE_RADIUS

LAYOUTS = ("random", "slots")


@dataclass(frozen=True)
class Layout:
    """One episode's randomization: where things are and which object the instruction names."""

    object_xy: dict[str, np.ndarray]
    object_yaw: dict[str, float]
    target: str
    zone_xy: np.ndarray
    tcp_start: np.ndarray
    phrasing: int


@dataclass(frozen=True)
class Task(abc.ABC):
    """A task family. Subclasses say how success is judged; the layout sampling is shared."""

    name: str
    phrasings: tuple[str, ...]
    max_steps: int
    needs_zone: bool = False
    success_tolerance: float = 0.04
    min_separation: float = 0.11
    description: str = field(default="", compare=False)

    def instruction(self, layout: Layout) -> str:
        return self.phrasings[layout.phrasing].format(color=layout.target)

    def sample_layout(self, rng: np.random.Generator, colors: tuple[str, ...], layout: str,
                      num_objects: int | None = None) -> Layout:
        """Place `num_objects` of the scene's `colors` (all by default); the rest stay off the table."""
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
        for _ in range(100):
            candidate = self._sample_layout_once(rng, colors, layout, num_objects or len(colors))
            if self.layout_ok(candidate):
                return candidate
        raise RuntimeError(f"{self.name}: no valid layout in 100 draws")

    def layout_ok(self, layout: Layout) -> bool:
        """Tasks reject layouts their goal cannot be reached in."""
        return True

    def _sample_layout_once(self, rng: np.random.Generator, colors: tuple[str, ...], layout: str,
                            num_objects: int) -> Layout:
        order = [str(c) for c in rng.permutation(colors)][:num_objects]
        if layout == "slots":
            xy = _slot_positions(rng, len(order))
        else:
            xy = _scattered_positions(rng, len(order), self.min_separation)
        object_xy = dict(zip(order, xy))
        zone_xy = _zone_position(rng, list(object_xy.values())) if self.needs_zone else np.array([0.0, 0.5])
        return Layout(
            object_xy=object_xy,
            object_yaw={c: float(rng.uniform(-np.pi / 6, np.pi / 6)) for c in order},
            target=str(rng.choice(order)),
            zone_xy=zone_xy,
            tcp_start=np.array([rng.uniform(-0.18, 0.18), rng.uniform(-0.16, 0.0), rng.uniform(0.12, 0.24)]),
            phrasing=int(rng.integers(len(self.phrasings))),
        )

    @abc.abstractmethod
    def is_success(self, env) -> bool:
        """Whether the episode has reached its goal, judged from the environment's privileged state."""


def _slot_positions(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Fixed slots in a row across the table (at least three), n of them taken, a centimetre of jitter each."""
    slots = np.linspace(-0.13, 0.13, max(n, 3))
    xs = np.sort(rng.choice(slots, size=n, replace=False))
    return [np.array([x, 0.03]) + rng.uniform(-0.01, 0.01, size=2) for x in xs]


def _scattered_positions(rng: np.random.Generator, n: int, min_separation: float) -> list[np.ndarray]:
    low, high = np.array(TABLE_LOW), np.array(TABLE_HIGH)
    for _ in range(1000):
        xy = rng.uniform(low, high, size=(n, 2))
        gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(n)
        if gaps.min() >= min_separation:
            return list(xy)
    raise RuntimeError(f"could not place {n} objects {min_separation} m apart on the table")


def _zone_position(rng: np.random.Generator, objects: list[np.ndarray]) -> np.ndarray:
    low, high = np.array(TABLE_LOW), np.array(TABLE_HIGH)
    for _ in range(1000):
        zone = rng.uniform(low, high)
        if min(np.linalg.norm(zone - o) for o in objects) >= ZONE_RADIUS + 0.07:
            return zone
    raise RuntimeError("could not place the goal zone away from the objects")


def _distance_to_segment(point: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    t = np.clip((point - a) @ (b - a) / ((b - a) @ (b - a)), 0.0, 1.0)
    return float(np.linalg.norm(point - (a + t * (b - a))))


HOVER_HEIGHT = 0.05  # reaching means hovering this far above the cube's centre


class ReachTask(Task):
    def goal(self, env) -> np.ndarray:
        return env.object_position(env.target) + np.array([0.0, 0.0, HOVER_HEIGHT])

    def is_success(self, env) -> bool:
        return bool(np.linalg.norm(env.tcp - self.goal(env)) < self.success_tolerance)


class PushTask(Task):
    def layout_ok(self, layout: Layout) -> bool:
        """The named cube's path to the zone, and the spot behind it, are clear of the other cubes."""
        cube, zone = layout.object_xy[layout.target], layout.zone_xy
        direction = (zone - cube) / np.linalg.norm(zone - cube)
        start = cube - 0.08 * direction
        others = [xy for color, xy in layout.object_xy.items() if color != layout.target]
        return all(_distance_to_segment(xy, start, zone) > 0.065 for xy in others)

    def is_success(self, env) -> bool:
        cube = env.object_position(env.target)
        return bool(np.linalg.norm(cube[:2] - env.zone) < ZONE_RADIUS - 0.01)


LIFT_HEIGHT = 0.10


class LiftTask(Task):
    def is_success(self, env) -> bool:
        return bool(env.object_position(env.target)[2] > LIFT_HEIGHT)


class PickPlaceTask(Task):
    def is_success(self, env) -> bool:
        cube = env.object_position(env.target)
        in_zone = np.linalg.norm(cube[:2] - env.zone) < ZONE_RADIUS - 0.01
        resting = cube[2] < CUBE_HALF + 0.01
        released = env.tcp[2] > cube[2] + 0.03
        return bool(in_zone and resting and released)


TASKS: dict[str, Task] = {
    "reach": ReachTask(
        name="reach",
        phrasings=(
            "reach the {color} cube",
            "move to the {color} cube",
            "go to the {color} block",
            "hover over the {color} block",
            "move the gripper over the {color} cube",
            "please go to the {color} cube",
            "can you hover above the {color} block",
            "go to the {color} cube and stop above it",
        ),
        max_steps=40,
        description="hover the gripper just above the named cube",
    ),
    "push": PushTask(
        name="push",
        phrasings=(
            "push the {color} block to the white circle",
            "slide the {color} cube into the white zone",
            "push the {color} cube onto the goal",
            "slide the {color} block to the goal",
            "please push the {color} block into the white zone",
            "push the {color} cube to the goal without picking it up",
            "slide the {color} block over the table into the white circle",
            "push the {color} cube so that it ends in the white circle",
        ),
        max_steps=100,
        needs_zone=True,
        description="push the named cube into the white zone",
    ),
    "lift": LiftTask(
        name="lift",
        phrasings=(
            "pick up the {color} block",
            "lift the {color} cube",
            "grasp the {color} block and lift it",
            "lift the {color} cube and hold it",
            "please pick up the {color} cube",
            "grasp the {color} cube and pick it up",
            "lift the {color} cube from the table",
            "pick up the {color} cube and lift it",
        ),
        max_steps=60,
        description="grasp the named cube and lift it 8 cm",
    ),
    "pick_place": PickPlaceTask(
        name="pick_place",
        phrasings=(
            "put the {color} block in the white circle",
            "place the {color} cube on the white zone",
            "move the {color} block onto the goal",
            "pick up the {color} block and put it in the white circle",
            "grasp the {color} cube and place it on the goal",
            "lift the {color} cube and move it onto the white zone",
            "please put the {color} cube on the goal",
            "move the {color} block into the white circle and let go of it",
        ),
        max_steps=100,
        needs_zone=True,
        description="carry the named cube into the white zone and let go",
    ),
}
