"""Scripted experts: one per task, acting on privileged state (object poses, the goal zone).

    expert = make_expert(env)       # env from gym.make("sims/...") or a TabletopEnv
    obs, info = env.reset(seed=0)
    expert.reset()
    action = expert.act()            # float32 [4]: delta xyz in [-1, 1], gripper (-1 open, +1 closed)

Experts decide from the current state alone, except for short waits while the gripper closes or
opens, so they recover when their actions are perturbed (DART-style noise at collection time).
"""

from __future__ import annotations

import abc
import itertools

import numpy as np

from sims.env import TabletopEnv
from sims.scene import CUBE_HALF, ZONE_RADIUS
from sims.tasks import HOVER_HEIGHT, LIFT_HEIGHT

OPEN, CLOSED = -1.0, 1.0
SAFE_HEIGHT = 0.09  # tool centre point height for travelling over the cubes
GRASP_HEIGHT = 0.012  # finger tips just above the table, around the cube's lower half


class Expert(abc.ABC):
    FUNNEL_RADIUS = 0.08  # m sideways from the spot below where a descent starts
    FUNNEL_SLOPE = 1.0  # m of height allowed per m of sideways error

    def __init__(self, env):
        self.env: TabletopEnv = env.unwrapped
        self.reset()

    def reset(self) -> None:
        """Forget any per-episode memory. Call after every env.reset()."""

    @abc.abstractmethod
    def act(self, observation=None) -> np.ndarray:
        """The next action, from the environment's privileged state."""

    def _move(self, goal: np.ndarray, gripper: float, speed: float = 1.0, straight: bool = True,
              gain: float = 1.0) -> np.ndarray:
        """A step toward `goal`: along a straight line (all axes scaled together) or, with
        `straight=False`, each axis clipped on its own (a proportional controller per axis). `gain` is
        the share of the remaining distance covered per step once within reach (1: in one step)."""
        delta = gain * (goal - self.env.tcp) / self.env.max_step
        if not straight:
            return np.append(np.clip(delta, -speed, speed), gripper).astype(np.float32)
        largest = np.abs(delta).max()
        if largest > speed:
            delta *= speed / largest
        return np.append(delta, gripper).astype(np.float32)

    def _funnel_height(self, error: float, floor: float) -> float:
        """How low the tool may go `error` m sideways of the spot it descends onto (at height `floor`): the
        lower, the closer in line. A policy reads the cube from the image to within about a centimetre; behind a
        sharp gate (descend once within 8 mm) it cannot tell which side of the gate it is on and hovers, while
        down a funnel its height follows its reading smoothly, and being low (which the state says exactly)
        means being in line."""
        return min(floor + self.FUNNEL_SLOPE * max(error - 0.004, 0.0), SAFE_HEIGHT)


class ReachExpert(Expert):
    """Closes half the remaining distance per step near the cube. A controller that closes all of it
    (gain 1) is at the edge of stability, and a policy that imitates it oscillates around the cube as
    soon as its actions arrive a tick late (measured: 88/100 under a 1.5-tick inference delay, against
    100/100 without); at gain 0.5 a delay of up to about two ticks stays stable."""

    GAIN = 0.5

    def act(self, observation=None) -> np.ndarray:
        goal = self.env.object_position(self.env.target) + np.array([0.0, 0.0, HOVER_HEIGHT])
        return self._move(goal, OPEN, straight=False, gain=self.GAIN)


class PushExpert(Expert):
    """Come down behind the cube on the far side from the zone, then push it through its centre.

    The descent is a funnel onto the spot behind the cube (the lower, the closer to it), as the grasping
    experts' is, and the push starts within 2 cm of the line through the cube: a policy that reads the cube a
    centimetre off still sees the expert come down and push, not hover or climb back out (read 10 mm off per
    axis at every step it pushes 20 of 20 home, against 2 of 20 with the 12 mm gates it had before:
    `benchmarks/grasp_precision.py --task sims/Push-v0 --jitter 10`). Over the cube itself the funnel keeps the
    tool above the cube's top: coming in over the cube, it used to let the tool down onto the cube's top edge and
    press there for the rest of the episode (2 of seeds 0..199 lost, none since)."""

    PUSH_HEIGHT = 0.015
    LATERAL = 0.02  # m off the push line through the cube's centre where pushing still starts
    OVER_CUBE_HEIGHT = 2 * CUBE_HALF + 0.015  # the lowest the tool goes while over the cube: 1.5 cm above its top

    def act(self, observation=None) -> np.ndarray:
        env = self.env
        tcp = env.tcp
        cube = env.object_position(env.target)[:2]
        to_zone = env.zone - cube
        direction = to_zone / max(np.linalg.norm(to_zone), 1e-6)
        offset = tcp[:2] - cube
        behind = -offset @ direction  # how far behind the cube, along the push direction
        lateral = abs(offset[0] * direction[1] - offset[1] * direction[0])
        contact = CUBE_HALF + 0.014  # cube half width plus the closed fingers' half thickness

        if tcp[2] < 0.035 and contact - 0.01 < behind < contact + 0.03 and lateral < self.LATERAL:
            # In contact or about to be: push toward a point ahead of the cube, correcting the line.
            remaining = np.linalg.norm(to_zone)
            goal_xy = cube + direction * min(remaining, 0.05) - direction * contact
            return self._move(np.append(goal_xy, self.PUSH_HEIGHT), CLOSED, speed=0.6)
        pre_push = cube - direction * (contact + 0.02)
        error = np.linalg.norm(tcp[:2] - pre_push)
        if error < self.FUNNEL_RADIUS and behind > 0:
            height = self._funnel_height(error, self.PUSH_HEIGHT)
            if behind < contact and lateral < contact:  # over the cube
                height = max(height, self.OVER_CUBE_HEIGHT)
            return self._move(np.append(pre_push, height), CLOSED)
        if tcp[2] < SAFE_HEIGHT - 0.02 and np.linalg.norm(offset) < 0.09:
            return self._move(np.append(tcp[:2], SAFE_HEIGHT), CLOSED)  # clear the cube first
        return self._move(np.append(pre_push, SAFE_HEIGHT), CLOSED)


class GraspingExpert(Expert):
    """Shared grasp: line up above the cube, descend, close, and confirm the cube is held."""

    CLOSE_STEPS = 3
    CLOSE_RADIUS = 0.012

    def reset(self) -> None:
        self._closing = 0

    def _holding(self) -> bool:
        env = self.env
        cube = env.object_position(env.target)
        between_fingers = np.linalg.norm(cube[:2] - env.tcp[:2]) < 0.02 and abs(cube[2] - env.tcp[2]) < 0.04
        # A cube turned about z is held across its corners, up to sqrt(2) of its width.
        return bool(between_fingers and env.gripper_opening < 2 * CUBE_HALF * 1.45)

    def _grasp(self) -> np.ndarray:
        env = self.env
        tcp = env.tcp
        cube = env.object_position(env.target)
        if self._closing:
            self._closing -= 1
            return self._move(tcp, CLOSED)
        if env.gripper_opening < 2 * CUBE_HALF - 0.004:
            return self._move(np.append(tcp[:2], tcp[2] + 0.03), OPEN)  # closed on nothing: open, back off
        if np.linalg.norm(tcp[:2] - cube[:2]) < self.CLOSE_RADIUS and tcp[2] < GRASP_HEIGHT + 0.008:
            self._closing = self.CLOSE_STEPS
            return self._move(tcp, CLOSED)
        return self._approach(tcp, cube)

    def _approach(self, tcp: np.ndarray, cube: np.ndarray) -> np.ndarray:
        """Down a funnel over the cube, else up to the safe height and across."""
        error = np.linalg.norm(tcp[:2] - cube[:2])
        if error < self.FUNNEL_RADIUS:
            return self._move(np.append(cube[:2], self._funnel_height(error, GRASP_HEIGHT)), OPEN)
        if tcp[2] < SAFE_HEIGHT - 0.03:
            return self._move(np.append(tcp[:2], SAFE_HEIGHT), OPEN)
        return self._move(np.append(cube[:2], SAFE_HEIGHT), OPEN)


class LiftExpert(GraspingExpert):
    def act(self, observation=None) -> np.ndarray:
        if self._holding() and not self._closing:
            return self._move(np.append(self.env.tcp[:2], LIFT_HEIGHT + 0.06), CLOSED)
        return self._grasp()


class PickPlaceExpert(GraspingExpert):
    CARRY_HEIGHT = 0.10

    def reset(self) -> None:
        super().reset()
        self._releasing = 0

    def act(self, observation=None) -> np.ndarray:
        env = self.env
        tcp = env.tcp
        cube = env.object_position(env.target)
        cube_in_zone = np.linalg.norm(cube[:2] - env.zone) < ZONE_RADIUS - 0.025
        if self._releasing or (cube_in_zone and cube[2] < CUBE_HALF + 0.01):
            # Let go and rise clear of the cube.
            self._releasing = max(self._releasing - 1, 0)
            return self._move(np.append(tcp[:2], cube[2] + 0.08), OPEN)
        if self._holding() and not self._closing:
            over_zone = np.linalg.norm(tcp[:2] - env.zone) < 0.01
            if over_zone:
                if tcp[2] < GRASP_HEIGHT + 0.012:
                    self._releasing = 2
                    return self._move(tcp, OPEN)
                return self._move(np.append(env.zone, GRASP_HEIGHT), CLOSED)
            if tcp[2] < self.CARRY_HEIGHT - 0.03:
                return self._move(np.append(tcp[:2], self.CARRY_HEIGHT), CLOSED)
            return self._move(np.append(env.zone, self.CARRY_HEIGHT), CLOSED)
        return self._grasp()


class MisreadCube:
    """An environment as a scripted expert sees it, with the named cube read off where it is: by a fixed `offset`
    (m, sideways) and by a fresh Gaussian error of `spread` (m, per horizontal axis) each time it is looked at, as
    a policy reading the cube from the image does; with `zone_turn` (radians), the zone read turned by that angle
    about the named cube (the push's direction misread). The physics and the success check see the real scene.

        expert = make_expert(env); expert.env = MisreadCube(env.unwrapped, spread=0.008, rng=rng)
    """

    def __init__(self, env, offset=(0.0, 0.0), spread: float = 0.0, rng: np.random.Generator | None = None,
                 zone_turn: float = 0.0):
        self._env, self._offset, self._spread = env, np.asarray(offset, dtype=float), spread
        self._rng = rng or np.random.default_rng(0)
        self._zone_turn = zone_turn

    def __getattr__(self, name):
        return getattr(self._env, name)

    @property
    def unwrapped(self):
        return self

    def object_position(self, color: str) -> np.ndarray:
        position = self._env.object_position(color)
        if color != self._env.target:
            return position
        error = self._offset + (self._rng.normal(0.0, self._spread, 2) if self._spread else 0.0)
        return position + np.append(error, 0.0)

    @property
    def zone(self) -> np.ndarray:
        cube = self._env.object_position(self._env.target)[:2]
        cos, sin = np.cos(self._zone_turn), np.sin(self._zone_turn)
        return cube + np.array([[cos, -sin], [sin, cos]]) @ (self._env.zone - cube)


class MissedGrasp:
    """What a grasping expert's episode executes when its first grasp is missed on purpose: the expert's approach
    aimed 15-25 mm off the named cube, and the gripper closed where the fingers come down (on the cube's edge or
    top, or beside it), as a policy that misreads the cube does. The demonstration's labels stay the expert's
    own actions, so from there they show the recovery it never needs otherwise: open, back off, come down again.

    Why: every PickPlace loss of a policy trained without it (7 of 50 episodes) began with a close 4 cm up, the
    fingers resting on the cube's top 13-36 mm off its centre (`benchmarks/grasp_precision.py POLICY --task
    sims/PickPlace-v0`), a state no demonstration had shown."""

    OFFSET = (0.015, 0.025)  # m, in a random horizontal direction
    LOW = 0.045  # m: the tool centre at the cube's top or below
    NEAR = 0.04  # m sideways from the cube

    def __init__(self, expert: GraspingExpert, rng: np.random.Generator):
        angle, distance = rng.uniform(0.0, 2 * np.pi), rng.uniform(*self.OFFSET)
        self.env = expert.env
        self.misled = type(expert)(MisreadCube(self.env, offset=distance * np.array([np.cos(angle), np.sin(angle)])))
        self._closing = 0
        self.done = False

    def act(self, label: np.ndarray) -> np.ndarray:
        """The action to execute this step, given the expert's (`label`)."""
        if self.done:
            return label
        env = self.env
        aimed = self.misled.act()
        if not self._closing and env.tcp[2] < self.LOW and \
                np.linalg.norm(env.tcp[:2] - env.object_position(env.target)[:2]) < self.NEAR:
            self._closing = GraspingExpert.CLOSE_STEPS
        if not self._closing:
            return aimed
        self._closing -= 1
        self.done = self._closing == 0
        return np.array([0.0, 0.0, 0.0, CLOSED], np.float32)


class MisdirectedPush:
    """What a push expert's episode executes when its first push is aimed wrong: the expert's approach and push
    with the cube read 5-15 mm off and the zone 15-35 degrees off its direction (either side), until the cube has
    moved 4 cm, as a policy that misreads the scene does. The labels stay the expert's own actions, so from there
    they show the recovery: correct the line, or come round and push again.

    Measured to hurt, and not in the built-in recipe: a quarter of Push's demonstrations with it took the recipe's
    Push from 46/50 to 25/50 (docs/builtin-suite-history.md, "What limits Push"); the policy pushed off line
    from the start."""

    OFFSET = (0.005, 0.015)  # m, in a random horizontal direction
    TURN = (np.radians(15), np.radians(35))
    SHOVE = 0.04  # m the cube moves before the expert takes over

    def __init__(self, expert: PushExpert, rng: np.random.Generator):
        angle, distance = rng.uniform(0.0, 2 * np.pi), rng.uniform(*self.OFFSET)
        turn = rng.choice([-1.0, 1.0]) * rng.uniform(*self.TURN)
        self.env = expert.env
        self.misled = PushExpert(MisreadCube(self.env, offset=distance * np.array([np.cos(angle), np.sin(angle)]),
                                             zone_turn=turn))
        self._start = self.env.object_position(self.env.target)[:2].copy()
        self.done = False

    def act(self, label: np.ndarray) -> np.ndarray:
        """The action to execute this step, given the expert's (`label`)."""
        env = self.env
        self.done = self.done or np.linalg.norm(env.object_position(env.target)[:2] - self._start) > self.SHOVE
        return label if self.done else self.misled.act()


def gone_wrong(expert: Expert) -> type[MissedGrasp] | type[MisdirectedPush] | None:
    """How this expert's first attempt is made to go wrong on purpose (built as `gone_wrong(expert)(expert, rng)`
    after env.reset()), or None for a task without one (Reach, Meta-World)."""
    if isinstance(expert, GraspingExpert):
        return MissedGrasp
    if isinstance(expert, PushExpert):
        return MisdirectedPush
    return None


EXPERTS: dict[str, type[Expert]] = {
    "reach": ReachExpert,
    "push": PushExpert,
    "lift": LiftExpert,
    "pick_place": PickPlaceExpert,
}


def make_expert(env) -> Expert:
    """The scripted expert for the environment's task (Meta-World's own for its tasks)."""
    if not isinstance(env.unwrapped, TabletopEnv):
        from sims.metaworld import MetaWorldEnv, MetaWorldExpert

        if isinstance(env.unwrapped, MetaWorldEnv):
            return MetaWorldExpert(env)
        raise ValueError(f"no scripted expert for {type(env.unwrapped).__name__}")
    return EXPERTS[env.unwrapped.task.name](env)


def run_episode(env, expert: Expert, seed: int, noise: float = 0.0, rng: np.random.Generator | None = None,
                options: dict | None = None, after_success: int = 0, recoveries: float = 0.0):
    """Roll out one episode; yields (observation, expert_action, reward, terminated, truncated, info) per step.

    With `noise > 0` the executed action is the expert's plus Gaussian noise, while the yielded label
    stays the expert's clean action (DART), so demonstrations show how to recover from small errors.
    `options` goes to env.reset (e.g. {"target": "red"}). The episode ends at its first success, or
    `after_success` steps later (the expert goes on acting, and `info["success_step"]` says when the
    first success was): demonstrations then also show what the expert does once it is there.
    `recoveries`: the share of episodes whose first attempt goes wrong on purpose (`gone_wrong`: a grasp that
    misses, a push aimed off; executed, never labelled), so that the labels show the recovery; `info["recovery"]`
    says whether this one's did. Tasks without such an attempt (Reach) are left alone.
    """
    obs, info = env.reset(seed=seed, options=options)
    expert.reset()
    rng = rng or np.random.default_rng(seed)
    # Drawn only when asked for, so that episodes without it replay exactly as they did before it existed.
    wrong, perturbation = None, gone_wrong(expert)
    if recoveries and perturbation is not None and rng.random() < recoveries:
        wrong = perturbation(expert, rng)
    success_step = None
    if env.spec is None or env.spec.max_episode_steps is None:
        raise ValueError("run_episode needs an env with a time limit (gym.make gives the registered one)")
    for step in itertools.count():
        action = expert.act(obs)
        executed = action if wrong is None else wrong.act(action)
        if noise > 0:
            executed = executed.copy()
            executed[:3] = np.clip(executed[:3] + rng.normal(0.0, noise, 3), -1.0, 1.0)
        obs_after, reward, _, truncated, info = env.step(executed)
        if success_step is None and info.get("is_success"):
            success_step = step
        succeeded = success_step is not None
        ends = truncated or (succeeded and step >= success_step + after_success)
        info = {**info, "is_success": succeeded, "success_step": success_step, "recovery": wrong is not None}
        yield obs, action, reward, ends and succeeded, ends and not succeeded, info
        if ends:
            return
        obs = obs_after
