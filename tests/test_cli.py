"""What every job shares (jobs/cli.py): its INFO log reaches stderr, a user error is one line."""

from __future__ import annotations

import signal
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


STOPPABLE = """
import sys, time
from jobs import cli
import dataclasses

@dataclasses.dataclass
class Config:
    name: str = "x"

cli.parse(Config, "a test job")
try:
    print("working", flush=True)
    time.sleep(120)
finally:
    print("cleaned up", flush=True)
"""


def test_sigterm_stops_a_job_like_ctrl_c():
    proc = subprocess.Popen([sys.executable, "-c", STOPPABLE], cwd=Path(__file__).parents[1], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline() == "working\n"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert out == "cleaned up\n" and err == "interrupted\n" and proc.returncode != 0, (out, err)


# A job whose config nests another with its own check (jobs.serve's AppConfig): tyro lets that check's error out.
NESTED = """
import dataclasses
from typing import Annotated
import tyro
from jobs import cli

@dataclasses.dataclass(frozen=True)
class Inner:
    batch: int = 1

    def __post_init__(self):
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")

@dataclasses.dataclass(frozen=True)
class Config:
    app: Annotated[Inner, tyro.conf.arg(name="")]

cli.parse(Config, "a test job")
"""


def test_a_nested_configs_check_is_a_user_error_too():
    out = subprocess.run([sys.executable, "-c", NESTED, "--batch", "0"], cwd=Path(__file__).parents[1],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "error: batch must be >= 1, got 0" in out.stderr and "Traceback" not in out.stderr, out.stderr
