"""A tiny YAM-like dataset for training tests: three camera videos, state, action, RECAP columns.

Values are chosen so a test can tell which frame it got: state[t, d] = 100*episode + t + d/100,
action = state + 0.5; adv_ind cycles positive/negative/none with t + episode; frames are smooth
gradients that differ by episode, camera and frame. Also a gs:// bucket on a local GCS emulator.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from typing import Any

import numpy as np
import pytest

from recap_ray.data import features as feats
from recap_ray.data import recap_columns, writer
from recap_ray.models import weights
from tests.train import gcs_emulator

LENGTHS = (7, 5, 9, 3)  # 24 frames; the last episode is shorter than any test action horizon
HEIGHT, WIDTH = 24, 32
TASKS = ("hand over the block", "pass the cup to the right")


def state(episode: int, length: int, width: int = 14) -> np.ndarray:
    return (100.0 * episode + np.arange(length)[:, None] + np.arange(width)[None] / 100).astype(np.float32)


def adv_ind(episode: int, frame: int) -> str:
    return recap_columns.ADV_VALUES[(frame + episode) % 3]


def _frames(length: int, episode: int, camera: int) -> np.ndarray:
    t = np.arange(length)[:, None, None]
    y = np.arange(HEIGHT)[None, :, None]
    x = np.arange(WIDTH)[None, None, :]
    out = np.zeros((length, HEIGHT, WIDTH, 3), np.uint8)
    out[..., 0] = (12 * t + 3 * x) % 256
    out[..., 1] = (50 * episode + 4 * y) % 256
    out[..., 2] = 70 * camera + 30
    return out


def make_train_dataset(root: Path, version: str = "v3.0", cameras: tuple[str, ...] = feats.YAM_CAMERAS, width: int = 14) -> Path:  # fmt: skip
    """Write the dataset at `root` (episode e succeeds when e is even; task = TASKS[e % 2]); `cameras` and the
    state/action `width` default to YAM's."""
    features = {
        "observation.state": {"dtype": "float32", "shape": [width], "names": [f"j{i}" for i in range(width)]},
        "action": {"dtype": "float32", "shape": [width], "names": [f"j{i}" for i in range(width)]},
        **{cam: {"dtype": "video", "shape": [HEIGHT, WIDTH, 3], "names": ["height", "width", "channels"]}
           for cam in cameras},
        **recap_columns.FEATURES,
    }  # fmt: skip
    w = writer.DatasetWriter(root, fps=30, features=features, version=version, robot_type="yam")
    for ep, n in enumerate(LENGTHS):
        s = state(ep, n, width)
        intervention = (np.arange(n) % 2).astype(np.int64)
        cols = {"observation.state": s, "action": s + np.float32(0.5)}
        cols.update({cam: _frames(n, ep, i) for i, cam in enumerate(cameras)})
        cols.update(recap_columns.compute(ep % 2 == 0, intervention))
        cols["adv_ind"] = np.asarray([adv_ind(ep, t) for t in range(n)], dtype=object)
        w.add_episode(cols, task=TASKS[ep % 2], meta={"success": ep % 2 == 0})
    return w.finalize()


def random_params(model: Any, seed: int) -> dict[str, Any]:
    """Normal numpy leaves shaped as `model`'s parameters (abstract is fine), not the config's init, so a load shows."""
    rng = np.random.default_rng(seed)
    flat = weights.flatten(weights.model_params(model))
    return weights.unflatten({p: rng.standard_normal(x.shape, np.float32).astype(x.dtype) for p, x in flat.items()})


@pytest.fixture(scope="session")
def train_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a v3.0 dataset: 4 episodes (7, 5, 9, 3 frames), 3 cameras 24x32, RECAP columns."""
    return make_train_dataset(tmp_path_factory.mktemp("train") / "tiny")


@pytest.fixture(scope="module")
def gcs_env() -> Iterator[dict[str, str]]:
    """A GCS emulator for the test module; yields the environment other processes (Ray workers) need to reach it."""
    with gcs_emulator.serve() as env:
        yield env


@pytest.fixture(scope="module")
def gcs_bucket(gcs_env: dict[str, str]) -> str:
    """gs://BUCKET on the module's GCS emulator."""
    return f"gs://{gcs_emulator.BUCKET}"
