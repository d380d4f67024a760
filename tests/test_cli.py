"""What every job shares (jobs/cli.py): its INFO log reaches stderr, a user error is one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# A job as it starts: its modules imported (orbax among them, which configures the root logger through
# absl on import), then the command line parsed, then it logs and fails on bad input.
JOB = """
import dataclasses, logging
import jobs.serve  # imports orbax
from jobs import cli

@dataclasses.dataclass
class Config:
    name: str = "x"

config = cli.parse(Config, "a test job")
logging.getLogger("jobs.example").info("ready: %s", config.name)
logging.getLogger("absl").info("orbax detail")
raise ValueError("episode 3: column 'reward' is missing")
"""


def test_a_jobs_info_log_and_user_error_reach_stderr():
    out = subprocess.run([sys.executable, "-c", JOB, "--name", "demo"], cwd=Path(__file__).parents[1],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "INFO jobs.example: ready: demo" in out.stderr, out.stderr[-2000:]
    assert "orbax detail" not in out.stderr  # absl's INFO (orbax: dozens of lines a checkpoint) stays quiet
    assert "error: episode 3: column 'reward' is missing" in out.stderr and "Traceback" not in out.stderr
