"""round.json: the record of one RECAP round, stage by stage, so a crashed round resumes.

{"round": DIR, "config": {...}, "stages": {name: {status, inputs, outputs, checkpoints, command,
started, finished, seconds, metrics, error, inputs_id}}}. A stage is `done` while its outputs exist
and its inputs are what it ran on (`inputs_id`: a dataset by content fingerprint, a training run by
its session and step); a rerun skips done stages and reruns the rest, so a rebuilt input reruns
every stage downstream of it. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from recap_ray.data import versions
from recap_ray.models import checkpoints
from recap_ray.train import run_record

logger = logging.getLogger(__name__)

FILE = "round.json"
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


def inputs_id(value: Any) -> Any:
    """`value` with each local path it names replaced by what identifies the content there.

    A dataset directory (meta/info.json) by its content fingerprint, a training run directory (run.json) by its
    session and last step (a retrained run has a new session); anything else as it is.
    """
    if isinstance(value, dict):
        return {k: inputs_id(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [inputs_id(v) for v in value]
    if isinstance(value, str) and "://" not in value:
        path = Path(value)
        if (path / "meta" / "info.json").is_file():
            return {"dataset": value, "fingerprint": versions.fingerprint(path)}
        if (path / checkpoints.RUN_FILE).is_file():
            record = run_record.read(path)
            return {"run": value, "session": record.get("session"), "step": record.get("step")}
    return value


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Manifest:
    """The round directory's round.json, updated as stages run."""

    def __init__(self, round_dir: str | Path, config: dict[str, Any]):
        config = _stored(config)
        self.dir = Path(round_dir)
        self.path = self.dir / FILE
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        if self.data and self.data.get("config") != config:
            changed = sorted(k for k in {*config, *self.data.get("config", {})} if config.get(k) != self.data["config"].get(k))
            raise ValueError(f"{self.path}: the round was started with another config (fields {changed} differ); "
                             "use a new --output directory for a different round")  # fmt: skip
        self.data.setdefault("round", str(self.dir))
        self.data.setdefault("config", config)
        self.data.setdefault("stages", {})
        self.save()

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True, default=str))
        tmp.replace(self.path)

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {"status": PENDING})

    def done(self, name: str, inputs: dict[str, Any]) -> bool:
        """Finished on these `inputs` (same content as then), and every output it recorded still exists."""
        return self._done(name, lambda: _stored(inputs_id(inputs)))

    def _done(self, name: str, ids: Callable[[], Any]) -> bool:
        entry = self.stage(name)
        return (entry["status"] == DONE and all(Path(p).exists() for p in entry.get("outputs", {}).values())
                and entry.get("inputs_id") == ids())  # fmt: skip

    def run(self, name: str, inputs: dict[str, Any], command: str, body: Callable[[], dict[str, Any]],
            resumable: Path | None = None) -> dict[str, Any]:
        """Run `body` unless the stage is done; body returns {"outputs": {...}, "metrics": {...}, "checkpoints": [...]}.

        A stage done before but no longer (an input rebuilt, an output deleted) starts afresh: the outputs it
        recorded inside the round directory are removed first (a training stage would otherwise resume its
        finished run); outputs elsewhere (a source dataset) are never touched. `resumable` is the directory an
        unfinished attempt leaves for the next to resume: removed when that attempt ran on other inputs.
        """
        ids = functools.cache(lambda: _stored(inputs_id(inputs)))  # fingerprints read every parquet file: once
        if self._done(name, ids):
            return self.stage(name)
        last = self.stage(name)
        if last["status"] == DONE:
            self._remove_outputs(name)
        elif resumable is not None and resumable.exists() and "inputs_id" in last and last["inputs_id"] != ids():
            logger.warning("stage %s: its unfinished attempt ran on other inputs; removing %s to start afresh", name, resumable)
            shutil.rmtree(resumable)
        entry = {"status": RUNNING, "inputs": inputs, "command": command, "started": _now(), "inputs_id": ids()}
        self.data["stages"][name] = entry
        self.save()
        start = time.perf_counter()
        try:
            result = body()
        except BaseException as err:
            entry.update(status=FAILED, error=f"{type(err).__name__}: {err}", seconds=round(time.perf_counter() - start, 1))
            self.save()
            raise
        entry.update(status=DONE, finished=_now(), seconds=round(time.perf_counter() - start, 1), **result)
        entry.pop("error", None)
        self.save()
        return entry

    def _remove_outputs(self, name: str) -> None:
        root = self.dir.resolve()
        for output in self.stage(name).get("outputs", {}).values():
            path = Path(output)
            if path.exists() and path.resolve().is_relative_to(root) and path.resolve() != root:
                logger.warning("stage %s: its input changed or an output is gone; removing %s to run it afresh", name, path)
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def _stored(value: Any) -> Any:
    """`value` as round.json holds it (tuples become lists)."""
    return json.loads(json.dumps(value, default=str))
