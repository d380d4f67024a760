"""Kinematics of one YAM-like arm: six joints to a fingertip position, and back.

Joints: j0 base yaw (0 faces +y, away from the robot), j1 shoulder pitch, j2 elbow pitch,
j3 wrist pitch, j4 wrist yaw, j5 wrist roll. Shoulder and elbow move the wrist in the vertical
plane set by the yaw; j3/j4 point a short tool link (wrist to fingertip); j5 only turns the
fingers about the tool axis. The inverse map keeps the tool pointing straight down, elbow up.
"""

from __future__ import annotations

import dataclasses

import numpy as np

JOINTS_PER_ARM = 6
ARM_DIM = JOINTS_PER_ARM + 1  # six joints plus the gripper
STATE_DIM = 2 * ARM_DIM  # [left j0..j5, left gripper, right j0..j5, right gripper], as on YAM


@dataclasses.dataclass(frozen=True)
class ArmGeometry:
    """Where an arm stands and how long its links are (metres)."""

    base: tuple[float, float, float]  # shoulder position in the world frame
    upper: float = 0.25  # shoulder to elbow
    fore: float = 0.25  # elbow to wrist
    tool: float = 0.05  # wrist to fingertip


def _yaw(joints: np.ndarray) -> np.ndarray:
    return joints[..., 0] + np.pi / 2


def chain(geometry: ArmGeometry, joints: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elbow, wrist and fingertip positions, each (..., 3), for joints (..., 6)."""
    joints = np.asarray(joints, dtype=np.float64)
    yaw = _yaw(joints)
    j1, j2, j3, j4 = joints[..., 1], joints[..., 2], joints[..., 3], joints[..., 4]
    radial = np.stack([np.cos(yaw), np.sin(yaw), np.zeros_like(yaw)], axis=-1)
    up = np.array([0.0, 0.0, 1.0])
    base = np.asarray(geometry.base, dtype=np.float64)
    elbow = base + geometry.upper * (np.cos(j1)[..., None] * radial + np.sin(j1)[..., None] * up)
    wrist = elbow + geometry.fore * (
        np.cos(j1 + j2)[..., None] * radial + np.sin(j1 + j2)[..., None] * up
    )
    pitch = j1 + j2 + j3
    tool_dir = np.stack(
        [np.cos(pitch) * np.cos(yaw + j4), np.cos(pitch) * np.sin(yaw + j4), np.sin(pitch)], axis=-1
    )
    tip = wrist + geometry.tool * tool_dir
    return elbow, wrist, tip


def fingertip(geometry: ArmGeometry, joints: np.ndarray) -> np.ndarray:
    """Fingertip (end-effector) position (..., 3) for joints (..., 6)."""
    return chain(geometry, joints)[2]


def finger_axis(joints: np.ndarray) -> np.ndarray:
    """Angle in the table plane of the line through both fingers: across the arm, turned by j5."""
    joints = np.asarray(joints, dtype=np.float64)
    return _yaw(joints) + np.pi / 2 + joints[..., 5]


def inverse(geometry: ArmGeometry, tip: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """Joints (6,) putting the fingertip at `tip` (3,) with the tool pointing down, elbow up.

    Unreachable targets are clamped to the nearest reachable point along the same direction.
    """
    tip = np.asarray(tip, dtype=np.float64)
    wrist = tip + np.array([0.0, 0.0, geometry.tool])
    dx, dy, dz = wrist - np.asarray(geometry.base, dtype=np.float64)
    yaw = np.arctan2(dy, dx)
    j0 = (yaw - np.pi / 2 + np.pi) % (2 * np.pi) - np.pi
    r = np.hypot(dx, dy)
    l1, l2 = geometry.upper, geometry.fore
    cos_elbow = (r * r + dz * dz - l1 * l1 - l2 * l2) / (2 * l1 * l2)
    j2 = -np.arccos(np.clip(cos_elbow, -1.0, 1.0))
    j1 = np.arctan2(dz, r) - np.arctan2(l2 * np.sin(j2), l1 + l2 * np.cos(j2))
    j3 = -np.pi / 2 - j1 - j2
    return np.array([j0, j1, j2, j3, 0.0, roll])
