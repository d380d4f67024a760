"""Decode throughput of our reader against lerobot's on the same dataset, side by side.

    python -m jobs.bench_data --episodes 8 --frames 150 --height 240 --width 320

Writes a dataset with our writer (lerobot's encoding settings: yuv420p, g=2, crf 30), then times
random-access and sequential reads of every camera at the same frames, ours in-process and
lerobot 0.4.4 (`LeRobotDataset.__getitem__`, pyav backend) in its peer venv. Prints a JSON report.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobs import cli
from recap_ray.data import dataset, features, writer

PEER = Path(__file__).resolve().parents[1] / "tests" / "interop" / "lerobot_peer.py"
VENVS = Path(os.environ.get("RECAP_PEER_VENVS", Path.home() / ".cache" / "recap-ray" / "venvs"))


@dataclass(frozen=True)
class Config:
    episodes: int = 8
    """Episodes in the generated dataset."""
    frames: int = 150
    """Frames per episode."""
    height: int = 240
    """Camera height (YAM records 480)."""
    width: int = 320
    """Camera width (YAM records 640)."""
    samples: int = 300
    """Random-access samples to time."""
    codec: str = "libsvtav1"
    """Video codec (lerobot's default is libsvtav1)."""
    seed: int = 0


def _make(root: Path, c: Config) -> Path:
    feats = {"observation.state": {"dtype": "float32", "shape": [14], "names": None}}
    for cam in features.YAM_CAMERAS:
        feats[cam] = {"dtype": "video", "shape": [c.height, c.width, 3], "names": ["height", "width", "channels"]}
    w = writer.DatasetWriter(root, fps=30, features=feats, version="v3.0", video_codec=c.codec)
    rng = np.random.default_rng(c.seed)
    yy, xx = np.mgrid[0 : c.height, 0 : c.width]
    for ep in range(c.episodes):
        cols = {"observation.state": rng.normal(size=(c.frames, 14)).astype(np.float32)}
        for k, cam in enumerate(features.YAM_CAMERAS):
            t = np.arange(c.frames)[:, None, None]
            img = np.zeros((c.frames, c.height, c.width, 3), np.uint8)
            img[..., 0] = (xx + 3 * t + 40 * k) % 256
            img[..., 1] = (yy + 2 * t) % 256
            img[..., 2] = (xx * yy // 64 + 10 * ep) % 256
            cols[cam] = img
        w.add_episode(cols, task="bench")
    return w.finalize()


def _ours(root: Path, pairs: list[tuple[int, int]]) -> float:
    with dataset.open(root) as ds:
        ds.frames(*pairs[0][:1], features.YAM_CAMERAS[0], [pairs[0][1]])
        start = time.perf_counter()
        for ep, f in pairs:
            for cam in features.YAM_CAMERAS:
                ds.frames(ep, cam, [f])
        return time.perf_counter() - start


def _lerobot(root: Path, global_idx: np.ndarray, tmp: Path) -> float:
    np.save(tmp / "idx.npy", global_idx)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp), "HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [str(VENVS / "lerobot" / "bin" / "python"), str(PEER), "bench", str(root), str(tmp / "idx.npy")],
        env=env, capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def main(c: Config) -> dict:
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        root = _make(tmp / "bench_ds", c)
        rng = np.random.default_rng(c.seed)
        total = c.episodes * c.frames
        modes = {
            "random": rng.choice(total, size=min(c.samples, total), replace=False),
            "sequential": np.arange(min(c.samples, total)),
        }
        report = {"config": c.__dict__, "results": {}}
        for mode, idx in modes.items():
            pairs = [(int(i) // c.frames, int(i) % c.frames) for i in idx]
            ours_s = _ours(root, pairs)
            theirs_s = _lerobot(root, idx, tmp)
            n = len(idx) * len(features.YAM_CAMERAS)
            report["results"][mode] = {
                "ours_frames_per_s": round(n / ours_s, 1),
                "lerobot_frames_per_s": round(n / theirs_s, 1),
                "speedup": round(theirs_s / ours_s, 2),
            }
        return report


if __name__ == "__main__":
    print(json.dumps(main(cli.parse(Config, __doc__)), indent=2))
