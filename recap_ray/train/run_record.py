"""RUN_DIR/run.json: what a run is and how far it got, rewritten atomically as it goes.

Fields: kind, config, dataset, dataset_fingerprint, init, global_batch, num_steps, step (the last
finished step), start_step (the step the latest (re)start resumed from), restarts (worker-group
restarts after a failure or preemption within one job), checkpoints (the saved steps), status
(running / finished / preempted), world_size, metrics (the last logged), session (the job
invocation), updated (UTC time).
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from recap_ray.models import checkpoints


def path(run_dir: str | Path) -> Path:
    return Path(run_dir) / checkpoints.RUN_FILE


def read(run_dir: str | Path) -> dict[str, Any]:
    """The record, or {} when the run has none yet."""
    p = path(run_dir)
    return json.loads(p.read_text()) if p.is_file() else {}


def write(run_dir: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    """Replace the record atomically (temp file + rename), stamping `updated`."""
    record = {**record, "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    p = path(run_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    tmp.replace(p)
    return record


def update(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into the record."""
    return write(run_dir, {**read(run_dir), **fields})


def start(run_dir: str | Path, session: str, **fields: Any) -> dict[str, Any]:
    """Mark a (re)start: a second start within the same session counts one restart."""
    record = read(run_dir)
    restarts = record.get("restarts", 0)
    if record.get("session") == session:
        restarts += 1
    return write(run_dir, {**record, **fields, "session": session, "restarts": restarts, "status": "running"})
