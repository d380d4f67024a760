"""Camera images agree with the world: object, goal and grippers where geometry puts them."""

import numpy as np

from recap_ray.sim import env as env_lib
from recap_ray.sim import kinematics, recording, render, world

CFG = world.TaskConfig()
ORANGE, GREEN = np.array(render.OBJECT), np.array(render.GOAL)


def _world(obj, goal, q=None):
    q = CFG.home_state if q is None else q
    return world.World(q=q.copy(), obj=np.array(obj, float), goal=np.array(goal, float), held=np.zeros(2, bool))


def _centroid(image, color):
    rows, cols = np.nonzero(np.all(image == color, axis=-1))
    assert rows.size > 0, f"colour {color} not in the image"
    return rows.mean(), cols.mean(), rows.size


def _head_pixel(x, y):
    # The head camera sees x in [-0.37, 0.37] left to right and y in [0.57, -0.17] top to bottom.
    side = 2 * 0.37
    return (0.2 + 0.37 - y) / side * CFG.image_height - 0.5, (x + 0.37) / side * CFG.image_width - 0.5


def test_head_camera_shows_object_and_goal_where_they_are():
    for obj, goal in [((-0.3, 0.3), (0.25, 0.3)), ((-0.15, 0.18), (0.3, 0.33))]:
        frames = render.render(CFG, _world((*obj, CFG.object_radius), goal))
        head = frames["head_camera"]
        assert head.shape == (96, 96, 3) and head.dtype == np.uint8
        row, col, n = _centroid(head, ORANGE)
        np.testing.assert_allclose((row, col), _head_pixel(*obj), atol=0.35)
        px = 0.74 / 96
        assert abs(n - np.pi * (CFG.object_radius / px) ** 2) < 6  # a disc of the object's size
        row, col, _ = _centroid(head, GREEN)
        np.testing.assert_allclose((row, col), _head_pixel(*goal), atol=0.35)


def test_goal_and_object_are_in_the_images_not_the_state():
    a = env_lib.HandoverEnv(CFG)
    b = env_lib.HandoverEnv(CFG)
    a.reset(1)
    b.reset(1)
    b.world.goal = b.world.goal + [-0.05, 0.04]
    b.world.obj = b.world.obj + [0.04, -0.03, 0.0]
    np.testing.assert_array_equal(a.state, b.state)
    oa, ob = a.observation(), b.observation()
    np.testing.assert_array_equal(oa["state"], ob["state"])
    assert not np.array_equal(oa["images"]["cam_high"], ob["images"]["cam_high"])


def test_wrist_camera_centres_on_its_fingertip():
    left = CFG.arms[0]
    tip = np.array([-0.22, 0.27, 0.10])
    obj = np.array([-0.22, 0.27 + 0.045, CFG.object_radius])  # just beyond the fingertip, away from the arm
    q = CFG.home_state.copy()
    q[world.ARM_SLICES[0]] = kinematics.inverse(left, tip)
    frames = render.render(CFG, _world(obj, (0.25, 0.3), q))
    # The view's half side is 0.05 + 0.5 * 0.10 = 0.10 m around the fingertip: 480 px per metre.
    row, col, n = _centroid(frames["left_wrist_camera"], ORANGE)
    np.testing.assert_allclose((row, col), (47.5 - 0.045 * 480, 47.5), atol=0.35)
    assert abs(n - np.pi * (CFG.object_radius * 480) ** 2) < 12
    row, col, _ = _centroid(frames["left_wrist_camera"], np.array(render.PALM[0]))
    np.testing.assert_allclose((row, col), (47.5, 47.5), atol=1.0)  # own palm at the centre
    assert not np.any(np.all(frames["right_wrist_camera"] == ORANGE, axis=-1))  # far from the right hand


def test_held_object_moves_with_the_gripper_in_the_head_camera():
    environment = env_lib.HandoverEnv(CFG)
    environment.reset(0)
    state = environment.world
    tip = world.tips(CFG, state.q)[0]
    state.obj, state.held[:] = tip.copy(), [True, False]
    state.q[world.LEFT_GRIPPER] = 0.0
    row, col, _ = _centroid(environment.frames()["head_camera"], ORANGE)
    np.testing.assert_allclose((row, col), _head_pixel(tip[0], tip[1]), atol=0.5)


def test_openpi_observation_layout():
    environment = env_lib.HandoverEnv(CFG)
    environment.reset(0)
    obs = environment.observation()
    assert set(obs) == {"images", "state", "prompt"}
    assert set(obs["images"]) == {"cam_high", "cam_left_wrist", "cam_right_wrist"}
    assert all(v.shape == (3, 96, 96) and v.dtype == np.uint8 for v in obs["images"].values())
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (14,)
    hwc = environment.observation("hwc")
    np.testing.assert_array_equal(hwc["images"]["cam_high"], obs["images"]["cam_high"].transpose(1, 2, 0))
    np.testing.assert_array_equal(hwc["images"]["cam_left_wrist"], environment.frames()["left_wrist_camera"])


def test_wide_images_keep_square_pixels():
    wide = world.TaskConfig(image_height=48, image_width=96)
    obj, goal = (-0.3, 0.3), (0.25, 0.3)
    head = render.render(wide, _world((*obj, wide.object_radius), goal))["head_camera"]
    assert head.shape == (48, 96, 3)
    # Rows span 0.74 m in 48 px; columns the same 0.74/48 m per pixel, so 1.48 m wide around x = 0.
    px = 0.74 / 48
    row, col, n = _centroid(head, ORANGE)
    np.testing.assert_allclose((row, col), ((0.57 - obj[1]) / px - 0.5, (obj[0] + 0.74) / px - 0.5), atol=0.35)
    assert abs(n - np.pi * (wide.object_radius / px) ** 2) < 4  # round, not stretched


def test_evaluation_videos_are_the_same_bytes_on_any_cpu(tmp_path, monkeypatch):
    """An evaluation video's bytes depend on its frames only: x264's SIMD code (the default) and its plain C code
    give the same file (without cpu-independent, x264's AVX-512 macroblock tree differed, and read leftover heap)."""
    env = env_lib.HandoverEnv()
    env.reset(3)
    frames = []
    for _ in range(20):
        frames.append(np.concatenate(list(env.frames().values()), axis=1))
        env.step(np.full(14, 0.02, np.float32))
    frames = np.stack(frames)
    recording.write_mp4(tmp_path / "simd.mp4", frames, fps=30)
    monkeypatch.setitem(recording.OPTIONS, "x264-params", recording.OPTIONS["x264-params"] + ":asm=0")
    recording.write_mp4(tmp_path / "c.mp4", frames, fps=30)
    assert (tmp_path / "c.mp4").read_bytes() == (tmp_path / "simd.mp4").read_bytes()
