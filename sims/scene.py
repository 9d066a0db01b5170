"""The tabletop scene, written as an MJCF string in code.

A table top at z = 0, a parallel-jaw gripper that moves in x, y, z on slide joints
(position actuators, gravity compensated), coloured cubes on free joints, a flat goal
zone that does not collide, a front camera and a wrist camera. Physics runs at 500 Hz.

Units are metres. Rendering is set up for speed: no shadows, no multisampling.
"""

from __future__ import annotations

from dataclasses import dataclass

# Colours the tasks can name. Saturated and far apart in hue, so a 64 px image separates them.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.10, 0.70, 0.15),
    "blue": (0.12, 0.25, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.60, 0.15, 0.75),
}

TIMESTEP = 0.002  # 500 Hz physics
CUBE_HALF = 0.02  # 4 cm cubes
ZONE_RADIUS = 0.06
FINGER_TRAVEL = 0.04  # each finger's inner face moves 0..4 cm from the centre line
FINGER_HALF_THICKNESS = 0.006
FINGER_HALF_LENGTH = 0.025  # vertical half extent of a finger
PALM_HEIGHT = 0.05  # palm centre above the finger tips
HOME_TCP_Z = 0.2  # the slide joints measure displacement from a tool centre point at (0, 0, HOME_TCP_Z)

# Where the tool centre point (between the finger tips) may go.
TCP_LOW = (-0.28, -0.22, 0.005)
TCP_HIGH = (0.28, 0.22, 0.30)
# Where objects and zones are placed.
TABLE_LOW = (-0.20, -0.12)
TABLE_HIGH = (0.20, 0.14)


@dataclass(frozen=True)
class SceneSpec:
    """What a scene holds. Tasks choose it; the environment builds it once."""

    object_colors: tuple[str, ...] = ("red", "green", "blue")
    image_size: int = 128
    show_zone: bool = False


def _cube(color: str, index: int) -> str:
    r, g, b = COLORS[color]
    x = -0.15 + 0.15 * index  # parked in a row; tasks place them at reset
    return f"""
    <body name="cube_{color}" pos="{x:.3f} 0 {CUBE_HALF}">
      <freejoint name="cube_{color}_joint"/>
      <geom name="cube_{color}" type="box" size="{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}"
            rgba="{r} {g} {b} 1" mass="0.05" friction="1.2 0.01 0.001" condim="4"/>
    </body>"""


def _finger(side: str, sign: int) -> str:
    return f"""
      <body name="finger_{side}" pos="0 0 {-PALM_HEIGHT + FINGER_HALF_LENGTH:.4f}">
        <joint name="finger_{side}" type="slide" axis="0 {sign} 0" range="0 {FINGER_TRAVEL}" damping="2"/>
        <geom name="finger_{side}" type="box" pos="0 {sign * FINGER_HALF_THICKNESS} 0"
              size="0.012 {FINGER_HALF_THICKNESS} {FINGER_HALF_LENGTH}" rgba="0.25 0.25 0.28 1"
              mass="0.05" friction="1.5 0.01 0.001" condim="4"/>
      </body>"""


def build_scene_xml(spec: SceneSpec) -> str:
    """MJCF for the scene. The gripper's body origin sits `PALM_HEIGHT` above the finger tips."""
    cubes = "".join(_cube(color, i) for i, color in enumerate(spec.object_colors))
    zone_alpha = 0.9 if spec.show_zone else 0.0
    size = spec.image_size
    return f"""
<mujoco model="tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{TIMESTEP}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <quality shadowsize="0" offsamples="0"/>
    <global offwidth="{max(size, 64)}" offheight="{max(size, 64)}"/>
    <headlight ambient="0.55 0.55 0.55" diffuse="0.45 0.45 0.45" specular="0 0 0"/>
  </visual>
  <default>
    <geom solref="0.004 1" solimp="0.95 0.99 0.001"/>
  </default>
  <worldbody>
    <geom name="floor" type="plane" pos="0 0 -0.75" size="2 2 1" rgba="0.32 0.32 0.34 1"/>
    <geom name="table" type="box" pos="0 0.02 -0.02" size="0.36 0.28 0.02" rgba="0.62 0.55 0.47 1"/>
    <body name="zone" pos="0 0 0.0005">
      <geom name="zone" type="cylinder" size="{ZONE_RADIUS} 0.0005" rgba="0.95 0.95 0.95 {zone_alpha}"
            contype="0" conaffinity="0"/>
    </body>
    <camera name="front" pos="0 -0.22 0.75" xyaxes="1 0 0 0 0.96 0.281" fovy="38"/>
    <body name="gripper" pos="0 0 {HOME_TCP_Z + PALM_HEIGHT}" gravcomp="1">
      <joint name="slide_x" type="slide" axis="1 0 0" damping="5"/>
      <joint name="slide_y" type="slide" axis="0 1 0" damping="5"/>
      <joint name="slide_z" type="slide" axis="0 0 1" damping="5"/>
      <geom name="palm" type="box" size="0.02 0.055 0.012" rgba="0.35 0.35 0.4 1" mass="0.4"/>
      <site name="tcp" pos="0 0 {-PALM_HEIGHT}" size="0.004" rgba="1 1 1 0"/>
      <camera name="wrist" pos="0.0 0 -0.012" xyaxes="0 -1 0 1 0 0" fovy="75"/>
      {_finger("left", 1)}
      {_finger("right", -1)}
    </body>
    {cubes}
  </worldbody>
  <actuator>
    <position name="act_x" joint="slide_x" kp="2500" kv="70" ctrlrange="{TCP_LOW[0]} {TCP_HIGH[0]}"/>
    <position name="act_y" joint="slide_y" kp="2500" kv="70" ctrlrange="{TCP_LOW[1]} {TCP_HIGH[1]}"/>
    <position name="act_z" joint="slide_z" kp="2500" kv="70"
              ctrlrange="{TCP_LOW[2] - HOME_TCP_Z} {TCP_HIGH[2] - HOME_TCP_Z}"/>
    <position name="act_finger_left" joint="finger_left" kp="300" kv="8" ctrlrange="0 {FINGER_TRAVEL}"/>
    <position name="act_finger_right" joint="finger_right" kp="300" kv="8" ctrlrange="0 {FINGER_TRAVEL}"/>
  </actuator>
  <contact>
    <exclude body1="gripper" body2="finger_left"/>
    <exclude body1="gripper" body2="finger_right"/>
  </contact>
</mujoco>
"""
