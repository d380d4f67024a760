"""Where the peer virtual environments live, and how tests call into them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

VENV_HOME = Path(os.environ.get("RECAP_PEER_VENVS", Path.home() / ".cache" / "recap-ray" / "venvs"))
PEER_SCRIPT = Path(__file__).with_name("lerobot_peer.py")
OPENPI_CLIENT_SCRIPT = Path(__file__).with_name("openpi_client_peer.py")


def python(name: str) -> Path:
    """The interpreter of peer venv `name`; fails (never skips) when it is not installed."""
    exe = VENV_HOME / name / "bin" / "python"
    if not exe.exists():
        pytest.fail(f"peer venv {exe.parent.parent} is missing: run `bash tests/install_peers.sh` (the test command does)")
    return exe


def run(venv: str, *args: str, tmp: Path, script: Path = PEER_SCRIPT) -> None:
    """Run a peer script (the lerobot one by default) in `venv`, offline, with its caches under `tmp`."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp),
        "HF_HOME": str(tmp / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    proc = subprocess.run([str(python(venv)), str(script), *args], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
        raise AssertionError(f"{script.name} ({venv}) failed with exit code {proc.returncode}:\n{proc.stderr[-3000:]}")
