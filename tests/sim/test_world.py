"""World physics: grasp, carry, handover, drop, success; resets from seeds."""

import numpy as np
import pytest

from recap_ray.sim import kinematics, world

CFG = world.TaskConfig()


def _world_with_tips(left_tip, right_tip, obj, goal=(0.25, 0.25), grippers=(1.0, 1.0)):
    left, right = CFG.arms
    q = np.concatenate([kinematics.inverse(left, np.array(left_tip)), [grippers[0]],
                        kinematics.inverse(right, np.array(right_tip)), [grippers[1]]])
    return world.World(q=q, obj=np.array(obj, float), goal=np.array(goal, float), held=np.zeros(2, bool))


def _hold(state, grippers, steps):
    action = state.q.copy()
    action[list(world.GRIPPERS)] = grippers
    for _ in range(steps):
        world.advance(CFG, state, action)


def test_reset_is_seeded_and_in_range():
    a, b = world.reset(CFG, np.random.default_rng(3)), world.reset(CFG, np.random.default_rng(3))
    np.testing.assert_array_equal(a.q, b.q)
    np.testing.assert_array_equal(a.obj, b.obj)
    np.testing.assert_array_equal(a.goal, b.goal)
    c = world.reset(CFG, np.random.default_rng(4))
    assert not np.array_equal(a.goal, c.goal)
    for s in (a, c):
        assert CFG.object_x[0] <= s.obj[0] <= CFG.object_x[1] and CFG.object_y[0] <= s.obj[1] <= CFG.object_y[1]
        assert CFG.goal_x[0] <= s.goal[0] <= CFG.goal_x[1] and CFG.goal_y[0] <= s.goal[1] <= CFG.goal_y[1]
        assert s.obj[2] == CFG.object_radius and not s.held.any()
        assert s.q.shape == (14,)


def test_joints_follow_targets_at_bounded_speed():
    state = world.reset(CFG, np.random.default_rng(0))
    start = state.q.copy()
    target = start + 1.0
    target[list(world.GRIPPERS)] = 0.0
    world.advance(CFG, state, target)
    step = state.q - start
    joints = [i for i in range(14) if i not in world.GRIPPERS]
    np.testing.assert_allclose(step[joints], CFG.joint_speed / CFG.fps)
    np.testing.assert_allclose(step[list(world.GRIPPERS)], -CFG.gripper_speed / CFG.fps)
    with pytest.raises(ValueError, match="14"):
        world.advance(CFG, state, np.zeros(7))


def test_grasp_needs_the_fingertip_near_the_object():
    obj = (-0.2, 0.25, CFG.object_radius)
    near = _world_with_tips((-0.2, 0.25, CFG.object_radius + 0.01), (0.22, 0.14, 0.16), obj)
    _hold(near, (0.0, 1.0), 10)
    assert near.held.tolist() == [True, False]
    far = _world_with_tips((-0.2, 0.25 + 0.05, CFG.object_radius), (0.22, 0.14, 0.16), obj)
    _hold(far, (0.0, 1.0), 10)
    assert not far.held.any()
    np.testing.assert_allclose(far.obj, obj)


def test_closed_gripper_does_not_pick_up_by_touching():
    obj = (-0.2, 0.25, CFG.object_radius)
    state = _world_with_tips((-0.2, 0.25, 0.12), (0.22, 0.14, 0.16), obj, grippers=(0.0, 1.0))
    left = CFG.arms[0]
    for z in np.linspace(0.12, CFG.object_radius, 12):
        action = state.q.copy()
        action[world.ARM_SLICES[0]] = kinematics.inverse(left, np.array([-0.2, 0.25, z]))
        world.advance(CFG, state, action)
    assert not state.held.any()


def test_carry_handover_drop_and_success():
    obj = (0.0, 0.27, 0.15)
    state = _world_with_tips((0.0, 0.27, 0.15), (0.005, 0.27, 0.15), obj, goal=(0.0, 0.27), grippers=(0.0, 1.0))
    state.held[0] = True  # the left already holds it up in the air
    _hold(state, (0.0, 1.0), 6)
    assert state.held.tolist() == [True, False]
    np.testing.assert_allclose(state.obj, world.tips(CFG, state.q)[0])
    _hold(state, (0.0, 0.0), 6)
    assert state.held.tolist() == [True, True]
    _hold(state, (1.0, 0.0), 6)  # the left lets go: the right keeps it
    assert state.held.tolist() == [False, True]
    np.testing.assert_allclose(state.obj, world.tips(CFG, state.q)[1])
    assert world.stage(CFG, state) == world.STAGE_RIGHT
    _hold(state, (1.0, 1.0), 4)  # the right lets go (the gripper passes 0.5 on the 4th step) ...
    assert not state.held.any()
    z0 = state.obj[2]  # ... and the object falls at fall_speed
    _hold(state, (1.0, 1.0), 1)
    assert state.obj[2] == pytest.approx(z0 - CFG.fall_speed / CFG.fps)
    assert not world.success(CFG, state)  # still falling
    _hold(state, (1.0, 1.0), 10)
    assert state.obj[2] == CFG.object_radius
    assert world.success(CFG, state) and world.stage(CFG, state) == world.STAGE_DONE
    state.goal = state.obj[:2] + [CFG.goal_radius + 0.001, 0.0]
    assert not world.success(CFG, state)
