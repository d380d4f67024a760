"""Session fixtures shared by every test: no network, a tokenizer trained here, CPU JAX."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_LOOPBACK_PREFIXES = ("127.", "::1", "localhost", "0.0.0.0")


def _is_loopback(address: object) -> bool:
    host = address[0] if isinstance(address, tuple) and address else address
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):
        return True  # unix sockets and the like
    return host == "" or host.startswith(_LOOPBACK_PREFIXES)


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    """Tests reach loopback only: a connect elsewhere fails loudly instead of downloading."""
    original = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            raise RuntimeError(f"test tried to reach the network: {address!r}")
        return original(self, address)

    socket.socket.connect = guarded  # type: ignore[method-assign]
    yield
    socket.socket.connect = original  # type: ignore[method-assign]


def train_sentencepiece(path_prefix: Path, vocab_size: int = 400) -> Path:
    """Train a tiny sentencepiece model with PaliGemma/Gemma special ids (pad 0, eos 1, bos 2, unk 3)."""
    from recap_ray import demo_assets

    return demo_assets.tokenizer(path_prefix, vocab_size)


@pytest.fixture(scope="session")
def sentencepiece_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a small sentencepiece `.model` trained for this test session."""
    return train_sentencepiece(tmp_path_factory.mktemp("spm") / "tokenizer")


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for the whole session (token auth off: tests submit nothing remote)."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
