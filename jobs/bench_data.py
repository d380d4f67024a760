"""Decode throughput of our reader against lerobot's on the same dataset, side by side.

    python -m jobs.bench_data --episodes 8 --frames 150 --height 240 --width 320

Writes a dataset with our writer (lerobot's encoding settings: libsvtav1, yuv420p, g=2, crf 30),
then times random-access and sequential reads of every camera at the same frames, ours in-process
(`Dataset.frames`, uint8 HWC) and lerobot 0.4.4 in its peer venv (`LeRobotDataset.__getitem__`
with lerobot's default video backend, one torch thread as in a DataLoader worker; it returns
float32 CHW in [0, 1]). Ours is also timed with that conversion added (`*_float_chw`), and
reading a sample's cameras in one `Dataset.frames_of` call, which decodes them concurrently
(`*_item`). The runs alternate `repeats` times and the report gives medians of wall time and of
CPU time (the steadier figure on a shared machine), and the load average before and after. Prints
a JSON report.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jobs import cli
from recap_ray.data import dataset, features, recap_columns, writer

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
    repeats: int = 3
    """Alternating runs of ours and lerobot per mode; medians are reported."""
    seed: int = 0
    root: str = ""
    """Keep the generated dataset here and reuse one already there with this config's episodes,
    frames and size (empty: a temporary directory)."""


PARAMS_FILE = "bench_dataset.json"  # what `make_dataset` was asked for, beside the dataset: `reusable` compares it


def make_dataset(root: Path, episodes: int, frames: int, height: int, width: int, codec: str = "libsvtav1", seed: int = 0,
                 noise: int = 0) -> Path:  # fmt: skip
    """A YAM-like v3.0 dataset for the benchmarks: three cameras of smooth moving gradients (plus uniform noise of
    +-`noise` levels: camera-like detail, which decodes slower), 14-wide state and action, the RECAP columns (even
    episodes succeed, every third frame an intervention)."""
    feats = {"observation.state": {"dtype": "float32", "shape": [14], "names": None},
             "action": {"dtype": "float32", "shape": [14], "names": None}, **recap_columns.FEATURES}  # fmt: skip
    for cam in features.YAM_CAMERAS:
        feats[cam] = {"dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"]}
    w = writer.DatasetWriter(root, fps=30, features=feats, version="v3.0", video_codec=codec)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    for ep in range(episodes):
        state = rng.normal(size=(frames, 14)).astype(np.float32)
        cols = {"observation.state": state, "action": state + np.float32(0.1),
                **recap_columns.compute(ep % 2 == 0, (np.arange(frames) % 3 == 0).astype(np.int64))}  # fmt: skip
        for k, cam in enumerate(features.YAM_CAMERAS):
            t = np.arange(frames)[:, None, None]
            img = np.zeros((frames, height, width, 3), np.int16)
            img[..., 0] = (xx + 3 * t + 40 * k) % 256
            img[..., 1] = (yy + 2 * t) % 256
            img[..., 2] = (xx * yy // 64 + 10 * ep) % 256
            if noise:
                img += rng.integers(-noise, noise + 1, img.shape, dtype=np.int16)
            cols[cam] = np.clip(img, 0, 255).astype(np.uint8)
        w.add_episode(cols, task="bench")
    out = w.finalize()
    (out / PARAMS_FILE).write_text(json.dumps(_params(episodes, frames, height, width, codec, seed, noise)))
    return out


def _params(episodes: int, frames: int, height: int, width: int, codec: str, seed: int, noise: int) -> dict[str, Any]:
    return {"episodes": episodes, "frames": frames, "height": height, "width": width, "codec": codec, "seed": seed,
            "noise": noise}  # fmt: skip


def reusable(root: Path, episodes: int, frames: int, height: int, width: int, codec: str = "libsvtav1", seed: int = 0,
             noise: int = 0) -> bool:  # fmt: skip
    """Whether `root` holds the dataset `make_dataset` writes for these arguments."""
    params = root / PARAMS_FILE
    return params.is_file() and json.loads(params.read_text()) == _params(episodes, frames, height, width, codec, seed, noise)


def _as_float_chw(frames: np.ndarray) -> np.ndarray:
    """What lerobot returns: float32 (N, 3, H, W) in [0, 1]."""
    return np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)


def _ours(root: Path, pairs: list[tuple[int, int]], float_chw: bool = False, item: bool = False) -> tuple[float, float]:
    """Wall and CPU seconds to read every camera at `pairs`, from a freshly opened dataset: one
    `frames` call a camera, or with `item` one `frames_of` call a sample (cameras decoded
    concurrently, as a sample's cameras come from one `LeRobotDataset.__getitem__`)."""
    with dataset.open(root) as ds:
        ds.frames(*pairs[0][:1], features.YAM_CAMERAS[0], [pairs[0][1]])
        start, cpu = time.perf_counter(), time.process_time()
        for ep, f in pairs:
            if item:
                ds.frames_of(ep, features.YAM_CAMERAS, [f])
                continue
            for cam in features.YAM_CAMERAS:
                frames = ds.frames(ep, cam, [f])
                if float_chw:
                    _as_float_chw(frames)
        return time.perf_counter() - start, time.process_time() - cpu


def _lerobot(root: Path, global_idx: np.ndarray, tmp: Path) -> dict:
    np.save(tmp / "idx.npy", global_idx)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp), "HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [str(VENVS / "lerobot" / "bin" / "python"), str(PEER), "bench", str(root), str(tmp / "idx.npy")],
        env=env, capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(c: Config) -> dict:
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        size = (c.episodes, c.frames, c.height, c.width)
        if c.root and reusable(Path(c.root), *size, codec=c.codec, seed=c.seed):
            root = Path(c.root)
        else:
            root = make_dataset(Path(c.root) if c.root else tmp / "bench_ds", *size, codec=c.codec, seed=c.seed)
        rng = np.random.default_rng(c.seed)
        total = c.episodes * c.frames
        modes = {
            "random": rng.choice(total, size=min(c.samples, total), replace=False),
            "sequential": np.arange(min(c.samples, total)),
        }
        # Load averages (1, 5, 15 min) before and after: the machine may be shared.
        report = {"config": c.__dict__, "load_before": os.getloadavg(), "results": {}}
        for mode, idx in modes.items():
            pairs = [(int(i) // c.frames, int(i) % c.frames) for i in idx]
            runs: dict[str, list[tuple[float, float]]] = {"ours": [], "ours_float_chw": [], "ours_item": [], "lerobot": []}
            for _ in range(c.repeats):  # alternate, so load changes on a shared machine hit both
                runs["ours"].append(_ours(root, pairs))
                runs["ours_float_chw"].append(_ours(root, pairs, float_chw=True))
                runs["ours_item"].append(_ours(root, pairs, item=True))
                theirs = _lerobot(root, idx, tmp)
                runs["lerobot"].append((theirs["seconds"], theirs["cpu_seconds"]))
            n = len(idx) * len(features.YAM_CAMERAS)
            wall = {k: float(np.median([r[0] for r in v])) for k, v in runs.items()}
            cpu = {k: float(np.median([r[1] for r in v])) for k, v in runs.items()}
            result = {"lerobot_backend": theirs["backend"]}
            if "default_backend_unavailable" in theirs:
                result["lerobot_default_backend_unavailable"] = theirs["default_backend_unavailable"]
            for k in runs:
                result[f"{k}_frames_per_s"] = round(n / wall[k], 1)
            result["speedup"] = round(wall["lerobot"] / wall["ours"], 2)
            result["speedup_float_chw"] = round(wall["lerobot"] / wall["ours_float_chw"], 2)
            result["speedup_item"] = round(wall["lerobot"] / wall["ours_item"], 2)
            for k in runs:
                result[f"{k}_frames_per_cpu_s"] = round(n / cpu[k], 1)
            result["cpu_speedup"] = round(cpu["lerobot"] / cpu["ours"], 2)
            result["cpu_speedup_float_chw"] = round(cpu["lerobot"] / cpu["ours_float_chw"], 2)
            result["cpu_speedup_item"] = round(cpu["lerobot"] / cpu["ours_item"], 2)
            report["results"][mode] = result
        report["load_after"] = os.getloadavg()
        return report


if __name__ == "__main__":
    print(json.dumps(main(cli.parse(Config, __doc__)), indent=2))
