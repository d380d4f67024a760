"""round.json: the record of one RECAP round, stage by stage, so a crashed round resumes.

{"round": DIR, "config": {...}, "stages": {name: {status, inputs, outputs, checkpoints, command,
started, finished, seconds, metrics, error}}}. A stage is `done` only after its outputs exist; a
rerun skips done stages and reruns the rest. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

FILE = "round.json"
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Manifest:
    """The round directory's round.json, updated as stages run."""

    def __init__(self, round_dir: str | Path, config: dict[str, Any]):
        config = json.loads(json.dumps(config, default=str))  # as stored: tuples become lists
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

    def done(self, name: str) -> bool:
        """Finished, and every output it recorded still exists."""
        entry = self.stage(name)
        return entry["status"] == DONE and all(Path(p).exists() for p in entry.get("outputs", {}).values())

    def run(self, name: str, inputs: dict[str, Any], command: str, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run `body` unless the stage is done; body returns {"outputs": {...}, "metrics": {...}, "checkpoints": [...]}."""
        if self.done(name):
            return self.stage(name)
        entry = {"status": RUNNING, "inputs": inputs, "command": command, "started": _now()}
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
