"""Fingertip kinematics: hand-computed poses and the inverse map."""

import numpy as np
import pytest

from recap_ray.sim import kinematics

ARM = kinematics.ArmGeometry(base=(-0.2, 0.0, 0.0), upper=0.25, fore=0.25, tool=0.05)


def test_straight_arm_points_forward():
    # All joints zero: yaw faces +y, both links and the tool lie along +y.
    elbow, wrist, tip = kinematics.chain(ARM, np.zeros(6))
    np.testing.assert_allclose(elbow, [-0.2, 0.25, 0.0], atol=1e-12)
    np.testing.assert_allclose(wrist, [-0.2, 0.50, 0.0], atol=1e-12)
    np.testing.assert_allclose(tip, [-0.2, 0.55, 0.0], atol=1e-12)


def test_hand_computed_pose():
    # Yaw +90 deg turns the arm toward -x; shoulder up 90 deg, elbow -90 deg, wrist -90 deg points the tool down.
    j = np.array([np.pi / 2, np.pi / 2, -np.pi / 2, -np.pi / 2, 0.3, 0.0])
    elbow, wrist, tip = kinematics.chain(ARM, j)
    np.testing.assert_allclose(elbow, [-0.2, 0.0, 0.25], atol=1e-12)
    np.testing.assert_allclose(wrist, [-0.45, 0.0, 0.25], atol=1e-12)
    np.testing.assert_allclose(tip, [-0.45, 0.0, 0.20], atol=1e-12)  # pointing down: wrist yaw j4 has no effect


def test_inverse_reaches_targets_pointing_down():
    rng = np.random.default_rng(0)
    for _ in range(200):
        target = np.array([rng.uniform(-0.4, 0.1), rng.uniform(0.1, 0.4), rng.uniform(0.02, 0.2)])
        if np.linalg.norm(target + [0, 0, ARM.tool] - ARM.base) > 0.49:  # beyond reach (0.5 m)
            continue
        joints = kinematics.inverse(ARM, target, roll=0.2)
        np.testing.assert_allclose(kinematics.fingertip(ARM, joints), target, atol=1e-9)
        _, wrist, tip = kinematics.chain(ARM, joints)
        np.testing.assert_allclose(wrist - tip, [0, 0, ARM.tool], atol=1e-9)
        assert joints[2] <= 0  # elbow up
        assert joints[5] == pytest.approx(0.2)


def test_finger_axis_is_across_the_arm():
    assert kinematics.finger_axis(np.zeros(6)) == pytest.approx(np.pi)  # arm along +y, fingers along x


def test_inverse_clamps_unreachable_targets_along_the_same_direction():
    target = np.array([0.5, 0.5, 0.1])
    tip = kinematics.fingertip(ARM, kinematics.inverse(ARM, target))
    wrist = tip + [0, 0, ARM.tool]
    assert np.linalg.norm(wrist - ARM.base) == pytest.approx(ARM.upper + ARM.fore)
    direction = (target + [0, 0, ARM.tool]) - ARM.base
    np.testing.assert_allclose((wrist - ARM.base) / 0.5, direction / np.linalg.norm(direction), atol=1e-9)
