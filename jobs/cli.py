"""What every job entry point shares: logging set-up, tyro parsing of its config dataclass, and user errors.

A job that stops on bad input (ValueError, FileNotFoundError, FileExistsError: a missing flag, a bad file, an
existing output) or whose work failed for a reason its message states whole (JobFailed) prints one line
`error: ...` naming it, without a traceback, and exits 1; set RECAP_TRACEBACK=1 to see the traceback.
SIGTERM (docker, Kubernetes, `ray job stop`) stops a job like Ctrl-C: its cleanup runs, it prints `interrupted`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import TracebackType
from typing import TypeVar

import tyro

T = TypeVar("T")


class JobFailed(RuntimeError):
    """The job's work failed; the message says where and why (the traceback that matters is in a worker's log)."""


USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, JobFailed)


def _excepthook(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
    """Report a user error on one line, an interrupt (Ctrl-C, SIGTERM) as such; anything else (or
    RECAP_TRACEBACK=1) with its traceback."""
    if os.environ.get("RECAP_TRACEBACK"):
        sys.__excepthook__(kind, err, tb)
    elif issubclass(kind, USER_ERRORS):
        print(f"error: {err}\n(RECAP_TRACEBACK=1 shows where it was raised)", file=sys.stderr)
    elif issubclass(kind, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
    else:
        sys.__excepthook__(kind, err, tb)


def parse(config_type: type[T], description: str) -> T:
    """Parse the command line into `config_type` and configure logging, error reporting and SIGTERM for the job."""
    sys.excepthook = _excepthook  # first: a nested config's check (its __post_init__) raises out of tyro.cli
    config = tyro.cli(config_type, description=description)
    setup_logging()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # docker, Kubernetes: stop like Ctrl-C, cleanup run
    return config


def setup_logging() -> None:
    """INFO and above to stderr, absl's (orbax's) from WARNING."""
    # force: importing orbax already gave the root logger a WARNING handler (absl calls basicConfig on first use)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's INFO: ~40 lines a checkpoint save


# How long the processes of an embedded Ray wait for its GCS once it is gone before they exit (Ray's default: 60 s).
# Only a restarted GCS (fault tolerance, which an embedded Ray does not have) comes back: a stop that signals
# every process of the job (systemd's, Slurm's scancel, `kill -- -PGID`) kills the GCS with the driver's cleanup
# still waiting on it.
EMBEDDED_GCS_RECONNECT_S = 15


def connect_ray() -> None:
    """Join the cluster in $RAY_ADDRESS (`ray job submit` sets it), else start an embedded one without token
    auth; then SIGTERM (docker, Kubernetes, `ray job stop`) stops the job like Ctrl-C, its cleanup run."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster: no token needed
        ray.init(_system_config={"gcs_rpc_server_reconnect_timeout_s": EMBEDDED_GCS_RECONNECT_S})
    if threading.current_thread() is threading.main_thread():
        # ray.init's core worker installs a crash handler that takes SIGTERM from Python: a stack dump, then abort
        signal.signal(signal.SIGTERM, signal.default_int_handler)
