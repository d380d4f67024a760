"""openpi's `adapt_to_pi` conversion for Trossen (Aloha) arms: Aloha's joint space <-> the space pi0 models use.

openpi's Aloha configs train and serve with it on (pi05_base's `trossen` norm stats are of converted data):
joint signs flipped on some joints, the state gripper's linear position turned into the linkage angle,
the action gripper shifted and rescaled. YAM data (pi06_yam) uses none of it.
"""

from __future__ import annotations

import numpy as np

# Per-arm joint signs (integers, so the product is float64 as in openpi), gripper dims, and the ranges of
# the linear <-> angular gripper conversions (spec policy.md section 5).
_TROSSEN_SIGNS = np.array([1, -1, -1, 1, 1, 1, 1] * 2)
_GRIPPERS = [6, 13]
_GRIPPER_LINEAR = (0.01844, 0.05800)  # state gripper, metres, from Aloha's [0, 1]
_GRIPPER_ANGLE = (0.5476, 1.6296)  # state gripper angle range, radians, to [0, 1]
_GRIPPER_ACTION = (-0.6213, 1.4910)  # action gripper range (Aloha's [0, 1])
_GRIPPER_OFFSET = 0.5476  # action gripper angle offset
_HORN_RADIUS, _ARM_LENGTH = 0.022, 0.036  # gripper linkage, metres


def _check_width(x: np.ndarray, what: str) -> None:
    if x.shape[-1] != _TROSSEN_SIGNS.size:
        raise ValueError(f"adapt_to_pi: {what} is {x.shape[-1]} wide; the Trossen conversion takes Aloha's 14 dims")


def state_to_pi(state: np.ndarray) -> np.ndarray:
    """Aloha state -> pi0 space: joint signs flipped, gripper position (Aloha's [0, 1] of its linear range)
    as the gripper linkage's angle, rescaled to [0, 1] of the angle range."""
    state = np.asarray(state)
    _check_width(state, "the state")
    out = _TROSSEN_SIGNS * state
    lo, hi = _GRIPPER_LINEAR
    linear = out[..., _GRIPPERS] * (hi - lo) + lo
    cos_law = (_HORN_RADIUS**2 + linear**2 - _ARM_LENGTH**2) / (2 * _HORN_RADIUS * linear)
    lo, hi = _GRIPPER_ANGLE
    out[..., _GRIPPERS] = (np.arcsin(np.clip(cos_law, -1.0, 1.0)) - lo) / (hi - lo)
    return out


def actions_to_pi(actions: np.ndarray) -> np.ndarray:
    """Aloha action chunk -> pi0 space (training targets): joint signs flipped, gripper from Aloha's [0, 1]
    to the angle."""
    actions = np.asarray(actions)
    _check_width(actions, "the actions")
    out = _TROSSEN_SIGNS * actions
    lo, hi = _GRIPPER_ACTION
    out[..., _GRIPPERS] = out[..., _GRIPPERS] * (hi - lo) + lo - _GRIPPER_OFFSET
    return out


def actions_from_pi(actions: np.ndarray) -> np.ndarray:
    """Inverse of `actions_to_pi`: model actions back to Aloha's joint signs and gripper range."""
    actions = np.asarray(actions)
    _check_width(actions, "the actions")
    out = _TROSSEN_SIGNS * actions
    lo, hi = _GRIPPER_ACTION
    out[..., _GRIPPERS] = (out[..., _GRIPPERS] + _GRIPPER_OFFSET - lo) / (hi - lo)
    return out
