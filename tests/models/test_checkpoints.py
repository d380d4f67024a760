"""Run-directory layout: resolving a run to its latest finished step, and clear errors."""

from __future__ import annotations

import json

import pytest

from recap_ray.models import checkpoints


def _step(run, step):
    (checkpoints.params_dir(checkpoints.checkpoints_dir(run) / str(step))).mkdir(parents=True)


def test_resolve_run_dir_takes_latest_finished_step(tmp_path):
    run = tmp_path / "run"
    for s in (2, 10, 9):
        _step(run, s)
    (checkpoints.checkpoints_dir(run) / "11.orbax-checkpoint-tmp-123").mkdir()  # unfinished save
    (run / checkpoints.RUN_FILE).write_text(json.dumps({"kind": "value", "config": "value_tiny"}))
    assert checkpoints.steps(run) == [2, 9, 10]
    latest = checkpoints.resolve(run)
    assert latest == checkpoints.checkpoints_dir(run) / "10"
    assert checkpoints.resolve(latest) == latest
    assert checkpoints.resolve(run, step=9).name == "9"
    assert checkpoints.run_info(latest)["config"] == "value_tiny"


def test_resolve_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint or run directory"):
        checkpoints.resolve(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        checkpoints.resolve(tmp_path)
    run = tmp_path / "run"
    checkpoints.checkpoints_dir(run).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
        checkpoints.resolve(run)
    _step(run, 3)
    with pytest.raises(FileNotFoundError, match=r"saved steps \[3\]"):
        checkpoints.resolve(run, step=4)
    assert checkpoints.run_info(tmp_path / "loose") is None
