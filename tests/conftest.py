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


_SPM_CORPUS = """\
Task: pick up the red block and hand it over, State: 12 200 31 7 0 255;
Action: move the left arm to the object then close the gripper
Advantage: positive Advantage: negative Advantage: none
fold the towel, pour the water, open the drawer, place the cup on the plate
the robot passes the object from the left gripper to the right gripper
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 64 100 128 191 254 255
""" * 40


def train_sentencepiece(path_prefix: Path, vocab_size: int = 400) -> Path:
    """Train a tiny sentencepiece model with PaliGemma/Gemma special ids (pad 0, eos 1, bos 2, unk 3)."""
    import sentencepiece as spm

    corpus = path_prefix.with_suffix(".txt")
    corpus.write_text(_SPM_CORPUS)
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(path_prefix),
        vocab_size=vocab_size,
        model_type="bpe",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        byte_fallback=True,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return path_prefix.with_suffix(".model")


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
