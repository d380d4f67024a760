"""Datasets we write open in the real lerobot (0.4.4 for v3.0; 0.3.3 with datasets 3.6 for v2.1,
the format and pins openpi uses), and datasets lerobot writes open in our reader."""

from __future__ import annotations

import numpy as np
import pytest

from recap_ray.data import dataset, features
from tests.data.conftest import make_dataset
from tests.interop import peers

pytestmark = pytest.mark.interop

PEERS = {"v3.0": "lerobot", "v2.1": "lerobot-v21"}


def _ours(ds: dataset.Dataset) -> dict[str, np.ndarray]:
    out: dict[str, list] = {}
    for ep in range(ds.num_episodes):
        table = ds.episode_table(ep)
        for key, spec in ds.features.items():
            if spec["dtype"] in ("video", "image"):
                values = ds.frames(ep, key)
            else:
                values = features.column_to_numpy(table.column(key))
            out.setdefault(key, []).append(values)
    return {k: np.concatenate(v) for k, v in out.items()}


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_lerobot_reads_what_we_write(tmp_path, version):
    root = make_dataset(tmp_path / "ours", version, (9, 12, 7), with_image=True)
    dump = tmp_path / "dump.npz"
    peers.run(PEERS[version], "read", str(root), str(dump), tmp=tmp_path)
    theirs = np.load(dump)
    with dataset.open(root) as ds:
        ours = _ours(ds)
        assert int(theirs["num_frames"]) == ds.num_frames
        tasks = [ds.meta.tasks[i] for i in ours["task_index"]]
    assert list(theirs["task"]) == tasks
    for key, spec in ds.features.items():
        if spec["dtype"] in ("video", "image"):
            np.testing.assert_array_equal(np.round(theirs[key].transpose(0, 2, 3, 1) * 255).astype(np.uint8), ours[key], err_msg=key)
        elif spec["dtype"] == "string":
            assert list(theirs[key]) == list(ours[key]), key
        else:
            np.testing.assert_array_equal(theirs[key].reshape(ours[key].shape), ours[key], err_msg=key)


def test_we_read_what_lerobot_writes(tmp_path):
    root = tmp_path / "peer"
    peers.run("lerobot", "write", str(root), tmp=tmp_path)
    theirs = np.load(str(root) + ".npz")
    with dataset.open(root) as ds:
        assert ds.version == "v3.0" and ds.num_episodes == 3
        ours = _ours(ds)
        assert ds.meta.tasks == ["hand over the block 0", "hand over the block 1"]
    for key in ("observation.state", "action", "reward", "index", "episode_index", "frame_index"):
        np.testing.assert_array_equal(theirs[key].reshape(ours[key].shape), ours[key], err_msg=key)
    assert list(theirs["adv_ind"]) == list(ours["adv_ind"])
    for key in ("observation.images.head_camera", "observation.images.left_wrist_camera"):
        np.testing.assert_array_equal(np.round(theirs[key].transpose(0, 2, 3, 1) * 255).astype(np.uint8), ours[key], err_msg=key)
