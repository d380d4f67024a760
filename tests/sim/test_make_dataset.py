"""jobs.make_dataset: a valid LeRobot dataset that our reader and pyarrow read back as generated."""

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs import make_dataset
from jobs import validate as validate_job
from recap_ray.data import dataset
from recap_ray.sim import render, session, world

TASK = world.TaskConfig(image_height=48, image_width=64, time_limit_s=6.0)


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_dataset_validates_and_round_trips(tmp_path, version):
    config = make_dataset.Config(output=tmp_path / "sim", demos=2, rollouts=3, format=version, seed=3,
                                 task=TASK, workers=0)
    root = make_dataset.main(config)
    assert validate_job.main(validate_job.Config(root)) == 0
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == version and info["fps"] == 30 and info["total_episodes"] == 5
    for camera in render.CAMERAS:
        assert info["features"]["observation.images." + camera]["shape"] == [48, 64, 3]
    with dataset.open(root) as ds:
        assert ds.num_episodes == 5
        for ep in range(5):
            kind, index = ("demo", ep) if ep < 2 else ("rollout", ep - 2)
            expected = make_dataset.record(config, kind, index)  # regenerate the same episode independently
            meta = ds.meta.episodes[ep].extra
            assert meta["success"] == expected.success and meta["kind"] == kind
            np.testing.assert_array_equal(ds.column(ep, "observation.state"), expected.state)
            np.testing.assert_array_equal(ds.column(ep, "action"), expected.action)
            intervention = ds.column(ep, "intervention").reshape(-1)
            np.testing.assert_array_equal(intervention, expected.intervention)
            if kind == "demo":
                assert intervention.all()
            T = expected.length
            reward = ds.column(ep, "reward").reshape(-1)
            value = ds.column(ep, "value_label").reshape(-1)
            assert reward[-1] == float(expected.success) and not reward[:-1].any()
            if expected.success:  # -(T-1-t)/T, by hand
                np.testing.assert_allclose(value, -(T - 1 - np.arange(T)) / T, rtol=1e-6)
            else:
                assert (value == -1.0).all()
            adv = ds.episode_table(ep).column("adv_ind").to_pylist()
            assert adv == ["positive" if f else "none" for f in expected.intervention]
            for camera in render.CAMERAS:
                frames = ds.frames(ep, "observation.images." + camera)
                assert frames.shape == (T, 48, 64, 3)
                error = np.abs(frames.astype(int) - expected.frames[camera].astype(int)).mean()
                assert error < 8.0, (camera, error)  # lossy video, same pictures
    tasks = {t for ep in range(5) for t in ds.meta.episodes[ep].tasks}
    assert tasks == {TASK.prompt}
    if version == "v2.1":
        table = pq.read_table(root / "data" / "chunk-000" / "episode_000000.parquet")
        assert table.num_rows == make_dataset.record(config, "demo", 0).length


def test_worker_processes_give_the_same_episodes(tmp_path):
    base = make_dataset.Config(output=tmp_path / "a", demos=1, rollouts=1, seed=5, task=TASK, workers=0)
    inline = make_dataset.main(base)
    pooled = make_dataset.main(dataclasses.replace(base, output=tmp_path / "b", workers=1))
    with dataset.open(inline) as a, dataset.open(pooled) as b:
        for ep in range(2):
            for key in ("observation.state", "action", "intervention", "value_label"):
                np.testing.assert_array_equal(a.column(ep, key), b.column(ep, key))


def test_rejects_an_empty_dataset(tmp_path):
    with pytest.raises(ValueError, match="at least one episode"):
        make_dataset.main(make_dataset.Config(output=tmp_path / "x", demos=0, rollouts=0))


def test_state_names_follow_yam_order():
    names = session.state_names()
    assert names[:7] == [f"left_joint_{i}" for i in range(6)] + ["left_gripper"]
    assert names[7:] == [f"right_joint_{i}" for i in range(6)] + ["right_gripper"]
