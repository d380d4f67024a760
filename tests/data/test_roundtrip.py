"""Write -> read round trips and v2.1 <-> v3.0 conversion."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from recap_ray.data import convert, dataset, features, meta
from tests.data.conftest import CAMERAS, episode_columns, make_dataset


def test_write_read_round_trip(tmp_path, version):
    lengths = (12, 15, 9)
    root = make_dataset(tmp_path / "ds", version, lengths, with_image=True)
    with dataset.open(root) as ds:
        assert ds.version == version
        assert ds.num_episodes == 3 and ds.num_frames == sum(lengths)
        assert ds.meta.tasks == ["hand over the block 0", "hand over the block 1"]
        assert [e.extra["success"] for e in ds.meta.episodes] == [True, False, True]
        start = 0
        for ep, n in enumerate(lengths):
            expected = episode_columns(n, ep, ds.features, ep % 2 == 0)
            table = ds.episode_table(ep)
            assert table.num_rows == n
            np.testing.assert_array_equal(features.column_to_numpy(table.column("observation.state")), expected["observation.state"])
            np.testing.assert_array_equal(features.column_to_numpy(table.column("reward")), expected["reward"])
            assert table.column("adv_ind").to_pylist() == list(expected["adv_ind"])
            np.testing.assert_array_equal(features.column_to_numpy(table.column("index")), np.arange(start, start + n))
            np.testing.assert_allclose(features.column_to_numpy(table.column("timestamp")), np.arange(n) / 30, atol=1e-6)
            for cam in CAMERAS:
                decoded = ds.frames(ep, cam).astype(int)
                assert decoded.shape == expected[cam].shape
                assert np.abs(decoded - expected[cam]).mean() < 6  # lossy codec, smooth content
            image = ds.frames(ep, "observation.images.right_wrist_camera")
            np.testing.assert_array_equal(image, expected["observation.images.right_wrist_camera"])  # PNG is lossless
            start += n


def test_parquet_schema_metadata_uses_sequence(small_dataset):
    with dataset.open(small_dataset) as ds:
        path = small_dataset / ds.layout.data_file(ds.meta, 0)
    hf = pq.read_schema(path).metadata[b"huggingface"].decode()
    assert '"_type": "Sequence"' in hf and '"List"' not in hf


def test_v21_v30_v21_identity(tmp_path):
    src = make_dataset(tmp_path / "v21", "v2.1", (10, 13, 7), with_image=True)
    v3 = convert.convert(src, tmp_path / "v3", "v3.0")
    back = convert.convert(v3, tmp_path / "back", "v2.1")
    with dataset.open(src) as a, dataset.open(v3) as b, dataset.open(back) as c:
        assert b.version == meta.V30 and c.version == meta.V21
        for ep in range(3):
            assert a.episode_table(ep).equals(b.episode_table(ep))
            assert a.episode_table(ep).equals(c.episode_table(ep))
            for cam in CAMERAS:
                frames = a.frames(ep, cam)
                np.testing.assert_array_equal(frames, b.frames(ep, cam))  # remuxed, not re-encoded
                np.testing.assert_array_equal(frames, c.frames(ep, cam))
        assert [e.extra for e in a.meta.episodes] == [e.extra for e in c.meta.episodes]


def test_v30_splits_to_per_episode_files_starting_at_zero(tmp_path):
    src = make_dataset(tmp_path / "v3", "v3.0", (11, 8))
    out = convert.convert(src, tmp_path / "v21", "v2.1")
    with dataset.open(out) as ds:
        for ep in range(2):
            seg = ds.video_segment(ep, CAMERAS[0])
            assert seg.from_s == 0.0 and seg.path.name == f"episode_{ep:06d}.mp4"
