"""RUN_DIR/run.json: what a run is and how far it got, rewritten atomically as it goes.

Fields: kind, config, dataset, dataset_fingerprint, init, global_batch, num_steps, step (the last
finished step), start_step (the step the latest (re)start resumed from), restarts (worker-group
restarts after a failure or preemption within one job), checkpoints (the saved steps), status
(running / finished / preempted / stopped / failed), error (why it failed), world_size, cameras (camera role -> dataset camera trained on), metrics (the last logged), session (the job
invocation), updated (UTC time).

RUN_DIR/failure.json: a failure a restart would meet again (bad data, a non-finite loss, out of device
memory), written by the worker that met it; the workers Ray Train restarts in the same session find it
and end at once instead of failing again max_failures times.

RUN_DIR/stop.json: the driver was interrupted (Ctrl-C, SIGTERM) and asks the workers of its session to
save the step they are at and end.

RUN_DIR may be a cloud URI (`gs://bucket/run`, `s3://bucket/run`): the file goes through
`etils.epath` (fsspec).
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

from etils import epath

from recap_ray.models import checkpoints


FAILURE_FILE = "failure.json"
STOP_FILE = "stop.json"


def path(run_dir: epath.PathLike) -> epath.Path:
    """`RUN_DIR/run.json`."""
    return epath.Path(run_dir) / checkpoints.RUN_FILE


def read(run_dir: epath.PathLike) -> dict[str, Any]:
    """The record, or {} when the run has none yet."""
    try:
        return json.loads(path(run_dir).read_text())
    except FileNotFoundError:
        return {}


def _write_json(p: epath.Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, sort_keys=True)
    if "://" in str(p):
        p.write_text(text)
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(p)


def write(run_dir: epath.PathLike, record: dict[str, Any]) -> dict[str, Any]:
    """Replace the record atomically, stamping `updated`.

    On a local disk: a temporary file renamed over the old one. In a bucket: one upload, which S3 and
    GCS publish whole (a reader gets the old object or the new one, never a mix; both are strongly
    consistent) -- a temporary object plus a copy would add requests and guarantee nothing more, as
    a bucket has no rename.
    """
    record = {**record, "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    _write_json(path(run_dir), record)
    return record


def update(run_dir: epath.PathLike, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into the record."""
    return write(run_dir, {**read(run_dir), **fields})


def start(run_dir: epath.PathLike, session: str, **fields: Any) -> dict[str, Any]:
    """Mark a (re)start: a second start within the same session counts one restart."""
    record = {k: v for k, v in read(run_dir).items() if k != "error"}  # a resumed failed run is running again
    restarts = record.get("restarts", 0)
    if record.get("session") == session:
        restarts += 1
    return write(run_dir, {**record, **fields, "session": session, "restarts": restarts, "status": "running"})


def record_failure(run_dir: epath.PathLike, session: str, rank: int, error: BaseException) -> None:
    """Write RUN_DIR/failure.json for `session`: the error a restart would meet again, and the rank that met it."""
    _write_json(epath.Path(run_dir) / FAILURE_FILE, {"session": session, "rank": rank, "error": f"{type(error).__name__}: {error}"})


def failure(run_dir: epath.PathLike, session: str) -> dict[str, Any] | None:
    """`session`'s failure.json ({session, rank, error}), or None (none, or an earlier session's)."""
    try:
        found = json.loads((epath.Path(run_dir) / FAILURE_FILE).read_text())
    except FileNotFoundError:
        return None
    return found if found.get("session") == session else None


def request_stop(run_dir: epath.PathLike, session: str) -> None:
    """Ask `session`'s workers to save and end (RUN_DIR/stop.json)."""
    _write_json(epath.Path(run_dir) / STOP_FILE, {"session": session})


def clear_stop(run_dir: epath.PathLike) -> None:
    """Remove RUN_DIR/stop.json once its session has ended."""
    (epath.Path(run_dir) / STOP_FILE).unlink(missing_ok=True)


def stop_requested(run_dir: epath.PathLike, session: str) -> bool:
    """Whether RUN_DIR/stop.json asks `session` to stop (an earlier session's request is not this one's)."""
    try:
        found = json.loads((epath.Path(run_dir) / STOP_FILE).read_text())
    except FileNotFoundError:
        return False
    return found.get("session") == session
