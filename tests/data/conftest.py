"""Generated LeRobot datasets for the data-layer tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from recap_ray.data import recap_columns, writer

H, W = 24, 32
CAMERAS = ("observation.images.head_camera", "observation.images.left_wrist_camera")


def features(with_recap: bool = True, with_image: bool = False) -> dict[str, dict]:
    out = {
        "observation.state": {"dtype": "float32", "shape": [14], "names": [f"j{i}" for i in range(14)]},
        "action": {"dtype": "float32", "shape": [14], "names": [[f"j{i}" for i in range(14)]]},
    }
    for cam in CAMERAS:
        out[cam] = {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"]}
    if with_image:
        out["observation.images.right_wrist_camera"] = {"dtype": "image", "shape": [H, W, 3], "names": ["height", "width", "channels"]}
    if with_recap:
        out.update(recap_columns.FEATURES)
    return out


def frames(length: int, episode: int, camera: int) -> np.ndarray:
    """Smooth frames (codec-friendly) whose content encodes episode, camera and frame index."""
    t = np.arange(length)[:, None, None]
    y = np.arange(H)[None, :, None]
    x = np.arange(W)[None, None, :]
    out = np.zeros((length, H, W, 3), np.uint8)
    out[..., 0] = (8 * t + 2 * x) % 256
    out[..., 1] = (40 * episode + 3 * y) % 256
    out[..., 2] = 60 * camera + 20
    return out


def episode_columns(length: int, episode: int, feats: dict, success: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed + episode)
    cols = {
        "observation.state": rng.normal(size=(length, 14)).astype(np.float32),
        "action": rng.normal(size=(length, 14)).astype(np.float32),
    }
    for i, cam in enumerate(k for k, v in feats.items() if v["dtype"] in ("video", "image")):
        cols[cam] = frames(length, episode, i)
    if "intervention" in feats:
        inter = np.zeros(length, np.int64)
        inter[length // 3 : length // 2] = 1
        cols.update(recap_columns.compute(success, inter))
    return cols


def make_dataset(root: Path, version: str, lengths=(12, 15, 9), with_recap: bool = True, with_image: bool = False, seed: int = 0) -> Path:
    feats = features(with_recap, with_image)
    w = writer.DatasetWriter(root, fps=30, features=feats, version=version, robot_type="yam")
    for ep, n in enumerate(lengths):
        success = ep % 2 == 0
        w.add_episode(episode_columns(n, ep, feats, success, seed), task=f"hand over the block {ep % 2}", meta={"success": success})
    return w.finalize()


def make_flagged_dataset(root: Path, ends_in_success: list[bool], operator: list[list[int]]) -> Path:
    """A raw dataset without success metadata: lerobot's per-frame `next.success` and an `operator` bool column."""
    flag = {"dtype": "bool", "shape": [1], "names": None}
    feats = {"observation.state": {"dtype": "float32", "shape": [2], "names": ["a", "b"]},
             "action": {"dtype": "float32", "shape": [2], "names": ["a", "b"]}, "next.success": flag, "operator": flag}  # fmt: skip
    w = writer.DatasetWriter(root, fps=30, features=feats, version="v3.0")
    for last, op in zip(ends_in_success, operator):
        n = len(op)
        succ = np.zeros(n, bool)
        succ[n // 2] = True  # reached mid-episode, then lost: only the last frame counts
        succ[-1] = last
        w.add_episode({"observation.state": np.zeros((n, 2), np.float32), "action": np.zeros((n, 2), np.float32),
                       "next.success": succ, "operator": np.array(op, bool)}, task="t")  # fmt: skip
    return w.finalize()


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, to prove a dataset was not touched."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(params=["v2.1", "v3.0"])
def version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def small_dataset(tmp_path: Path, version: str) -> Path:
    return make_dataset(tmp_path / f"ds_{version}", version, with_image=True)
