"""What a write leaves when it fails or meets another job writing the same output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recap_ray.data import convert, merge, validate, versions, writer
from tests.data.conftest import CAMERAS, make_dataset, tree_digest

ROOT = Path(__file__).resolve().parents[2]


def test_a_second_job_writing_the_same_output_is_refused_while_the_first_writes(tmp_path):
    src = make_dataset(tmp_path / "raw", "v3.0", (6, 7, 5), with_recap=False)
    out = tmp_path / "prepared"
    second: list[subprocess.CompletedProcess] = []

    def transform(index, table, ep):
        if index == 1:  # the same command started again while this one writes
            cmd = [sys.executable, "-m", "jobs.prepare", "--input", str(src), "--output", str(out)]
            second.append(subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True))
        return table

    versions.derive(src, out, transform, change="test")
    assert second[0].returncode == 1, second[0].stderr
    assert f"error: {out}: another job is writing it" in second[0].stderr
    assert validate.validate(out, require_recap=False) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "raw"]  # no staging directory, no lock file


@pytest.mark.parametrize("job", ["convert", "merge", "derive"])
def test_a_failed_write_leaves_no_staging_directory(tmp_path, job):
    src = make_dataset(tmp_path / "raw", "v2.1", (6, 7, 5), with_recap=False)
    (src / "videos/chunk-000" / CAMERAS[0] / "episode_000001.mp4").write_bytes(b"not a video")
    before = tree_digest(src)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="episode"):
        if job == "convert":
            convert.convert(src, out, "v3.0")
        elif job == "merge":
            merge.merge([src], out, "v3.0")
        else:
            versions.derive(src, out, lambda i, t, ep: t.slice(1) if i == 1 else t, change="test")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    assert tree_digest(src) == before
    assert not writer.staging_dir(out).exists()
