"""Every kind of bad input gets an error naming where it is, and the input stays untouched."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import validate as validate_job
from recap_ray.data import dataset, validate, video
from tests.data.conftest import CAMERAS, frames, make_dataset, tree_digest


def _rewrite_column(root, episode, column, fn):
    """Corrupt one column of one episode in place (in a test copy)."""
    with dataset.open(root) as ds:
        path = root / ds.layout.data_file(ds.meta, episode)
    table = pq.read_table(path)
    i = table.column_names.index(column)
    values = table.column(column).to_pylist()
    values = fn(values, table.column("episode_index").to_pylist(), episode)
    table = table.set_column(i, table.schema.field(i), pa.array(values, type=table.schema.field(i).type))
    pq.write_table(table, path)


def _rows_of(values, episodes, episode):
    return [k for k, e in enumerate(episodes) if e == episode]


def _set_row(row_offset, value):
    def fn(values, episodes, episode):
        rows = _rows_of(values, episodes, episode)
        values[rows[row_offset]] = value(values[rows[row_offset]])
        return values

    return fn


def _nan_state(v):
    return [float("nan")] + v[1:]


CASES = {
    "nan_state": (lambda r: _rewrite_column(r, 1, "observation.state", _set_row(4, _nan_state)), "episode 1, column 'observation.state', frame 4", "NaN"),
    "inf_reward": (lambda r: _rewrite_column(r, 0, "reward", _set_row(2, lambda v: float("inf"))), "episode 0, column 'reward', frame 2", "NaN or inf"),
    "value_range": (lambda r: _rewrite_column(r, 2, "value_label", _set_row(3, lambda v: 0.5)), "episode 2, column 'value_label', frame 3", r"outside \[-1, 0\]"),
    "adv_ind": (lambda r: _rewrite_column(r, 1, "adv_ind", _set_row(0, lambda v: "great")), "episode 1, column 'adv_ind', frame 0", "not one of"),
    "frame_gap": (lambda r: _rewrite_column(r, 0, "frame_index", _set_row(5, lambda v: v + 1)), "episode 0, column 'frame_index', frame 5", "gap"),
    "timestamp_gap": (lambda r: _rewrite_column(r, 2, "timestamp", _set_row(6, lambda v: v + 0.01)), "episode 2, column 'timestamp', frame 6", "frame_index/fps"),
    "episode_index": (lambda r: _rewrite_column(r, 1, "episode_index", _set_row(1, lambda v: 7)), "episode 1, column 'episode_index', frame 1", "episode_index 7"),
}


def _missing_recap(root):
    info = json.loads((root / "meta/info.json").read_text())
    del info["features"]["reward_label"]
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))


def _truncate_video(root):
    mp4 = sorted(root.rglob("*.mp4"))[0]
    data = mp4.read_bytes()
    mp4.write_bytes(data[: len(data) // 2])


def _remove_video(root):
    sorted(root.rglob("*.mp4"))[-1].unlink()


def _wrong_shape(root):
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.images.head_camera"]["shape"] = [48, 32, 3]
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))


def _drop_packet(path, frame):
    """Remux `path` without the packet of one frame; the frames after it keep their times (a hole)."""
    import av

    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(path)) as inp, av.open(str(tmp), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0], opaque=True)
        for k, packet in enumerate(p for p in inp.demux(inp.streams.video[0]) if p.size):
            if k != frame:
                packet.stream = stream
                out.mux(packet)
    tmp.replace(path)


def _video_frames_differ_from_rows(root):
    """Episode 1's head camera gets 16 frames for its 15 rows (v2.1), or loses frame 7 inside its span of the shared
    file while the file keeps its length (v3.0): nothing is truncated, only the frame count is off."""
    with dataset.open(root) as ds:
        path = ds.video_segment(1, CAMERAS[0]).path
        if ds.version == "v2.1":
            path.unlink()
            video.encode(path, frames(16, 1, 0), 30)
        else:
            _drop_packet(path, ds.meta.episode(0).length + 7)


FILE_CASES = {
    "video_frames_differ": (_video_frames_differ_from_rows, "episode 1, column 'observation.images.head_camera'",
                            "video has 1[46] frames, the parquet has 15 rows"),
    "missing_recap": (_missing_recap, "column 'reward_label'", "columns disagree|missing"),
    "truncated_mp4": (_truncate_video, ".mp4", "cannot open|truncated|corrupt|duration"),
    "missing_mp4": (_remove_video, ".mp4", "missing"),
    "shape_mismatch": (_wrong_shape, "observation.images.head_camera", "info.json shape says 48x32"),
}


@pytest.mark.parametrize("case", sorted(CASES) + sorted(FILE_CASES))
def test_bad_input_is_reported_and_left_unchanged(small_dataset, tmp_path, case):
    bad = tmp_path / "bad"
    shutil.copytree(small_dataset, bad)
    corrupt, where, what = (CASES | FILE_CASES)[case]
    corrupt(bad)
    before = tree_digest(bad)
    issues = [str(i) for i in validate.validate(bad)]
    assert tree_digest(bad) == before
    assert issues, f"{case}: no error reported"
    import re

    assert any(where in i and re.search(what, i) for i in issues), issues


def test_valid_dataset_has_no_issues_and_job_exit_codes(small_dataset, tmp_path, capsys):
    assert validate.validate(small_dataset) == []
    assert validate_job.main(validate_job.Config(small_dataset)) == 0
    bad = tmp_path / "bad"
    shutil.copytree(small_dataset, bad)
    _remove_video(bad)
    assert validate_job.main(validate_job.Config(bad)) == 1
    assert "ERROR" in capsys.readouterr().out


def test_raw_dataset_report_hints_at_prepare_once(tmp_path, capsys):
    raw = make_dataset(tmp_path / "raw", "v3.0", (5,), with_recap=False)
    assert validate_job.main(validate_job.Config(raw, check_videos=False)) == 1
    out = capsys.readouterr().out
    assert out.count("RECAP column is missing") == 5
    assert out.count("hint:") == 1 and f"python -m jobs.prepare --input {raw}" in out and "--no-require-recap" in out
    assert validate_job.main(validate_job.Config(raw, require_recap=False, check_videos=False)) == 0
    assert "hint:" not in capsys.readouterr().out


def test_inconsistent_totals(small_dataset, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(small_dataset, bad)
    info = json.loads((bad / "meta/info.json").read_text())
    info["total_frames"] += 1
    (bad / "meta/info.json").write_text(json.dumps(info))
    assert any("total_frames" in str(i) for i in validate.validate(bad))
    np.testing.assert_equal(json.loads((bad / "meta/info.json").read_text())["total_frames"], info["total_frames"])
