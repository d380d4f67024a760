"""Runs inside the lerobot virtual environment (not ours): reads or writes a dataset with lerobot.

    python lerobot_peer.py read ROOT OUT.npz   # dump every column and decoded frame lerobot sees
    python lerobot_peer.py write ROOT          # write a small dataset with lerobot's own writer
    python lerobot_peer.py write_rolled ROOT   # 0.4.4: tiny size limits, so data and videos span files and chunks
    python lerobot_peer.py write_v21 ROOT      # 0.3.3: a v2.1 dataset (one file per episode), two chunk dirs
    python lerobot_peer.py convert ROOT        # 0.4.4: lerobot's own v2.1 -> v3.0 converter, in place, offline
    python lerobot_peer.py bench ROOT IDX.npy  # time lerobot's item access (all cameras) at global indices
"""

import inspect
import sys

import numpy as np


def read(root: str, out: str) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("recap_ray/interop", root=root, video_backend="pyav")
    dump = {"num_frames": np.array(len(ds)), "num_episodes": np.array(ds.meta.total_episodes)}
    items = [ds[i] for i in range(len(ds))]
    for key in items[0]:
        values = [item[key] for item in items]
        if hasattr(values[0], "numpy"):
            dump[key] = np.stack([v.numpy() for v in values])
        elif isinstance(values[0], str):
            dump[key] = np.array(values)
    np.savez(out, **dump)


def write(root: str) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.state": {"dtype": "float32", "shape": (14,), "names": None},
        "action": {"dtype": "float32", "shape": (14,), "names": None},
        "observation.images.head_camera": {"dtype": "video", "shape": (48, 64, 3), "names": ["height", "width", "channels"]},
        "observation.images.left_wrist_camera": {"dtype": "image", "shape": (48, 64, 3), "names": ["height", "width", "channels"]},
        "reward": {"dtype": "float32", "shape": (1,), "names": None},
        "adv_ind": {"dtype": "string", "shape": (1,), "names": None},
    }
    ds = LeRobotDataset.create("recap_ray/peer", fps=30, features=features, root=root, robot_type="yam", use_videos=True)
    rng = np.random.default_rng(0)
    for ep in range(3):
        for t in range(12 + ep):
            image = np.zeros((48, 64, 3), np.uint8)
            image[..., 0] = 15 * t
            image[..., 1] = 60 * ep
            ds.add_frame(
                {
                    "observation.state": rng.normal(size=14).astype(np.float32),
                    "action": rng.normal(size=14).astype(np.float32),
                    "observation.images.head_camera": image,
                    "observation.images.left_wrist_camera": image,
                    "reward": np.array([float(t == 11 + ep)], np.float32),
                    "adv_ind": "positive" if t % 2 else "none",
                    "task": f"hand over the block {ep % 2}",
                }
            )
        ds.save_episode()
    ds.finalize()
    read(root, root + ".npz")


# Episode lengths of the multi-file datasets: uneven, so file boundaries fall mid-way through frame runs.
MULTI_LENGTHS = (7, 13, 4, 10, 6, 9)


def _write_multi(root: str, configure) -> None:
    """Two video cameras (one smooth, one noisy, so their files roll over at different episodes), an
    image camera, vectors and the RECAP-ish scalars; `configure(ds)` sets size limits before recording."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    shape, names = (32, 48, 3), ["height", "width", "channels"]
    features = {
        "observation.state": {"dtype": "float32", "shape": (6,), "names": None},
        "action": {"dtype": "float32", "shape": (6,), "names": None},
        "observation.images.head_camera": {"dtype": "video", "shape": shape, "names": names},
        "observation.images.left_wrist_camera": {"dtype": "video", "shape": shape, "names": names},
        "observation.images.right_wrist_camera": {"dtype": "image", "shape": shape, "names": names},
        "reward": {"dtype": "float32", "shape": (1,), "names": None},
        "adv_ind": {"dtype": "string", "shape": (1,), "names": None},
    }
    ds = LeRobotDataset.create("recap_ray/peer", fps=30, features=features, root=root, robot_type="yam", use_videos=True)
    configure(ds)
    task_apart = "task" in inspect.signature(ds.add_frame).parameters
    rng = np.random.default_rng(1)
    for ep, n in enumerate(MULTI_LENGTHS):
        for t in range(n):
            smooth = np.zeros(shape, np.uint8)
            smooth[..., 0] = 18 * t
            smooth[..., 1] = 40 * ep
            frame = {
                "observation.state": rng.normal(size=6).astype(np.float32),
                "action": rng.normal(size=6).astype(np.float32),
                "observation.images.head_camera": smooth,
                "observation.images.left_wrist_camera": rng.integers(0, 256, shape, dtype=np.uint8),
                "observation.images.right_wrist_camera": smooth[::-1],
                "reward": np.array([float(t == n - 1)], np.float32),
                "adv_ind": ("positive", "negative", "none")[(t + ep) % 3],
            }
            if task_apart:  # 0.3.3: add_frame(frame, task)
                ds.add_frame(frame, f"task {ep % 3}")
            else:
                ds.add_frame({**frame, "task": f"task {ep % 3}"})
        if task_apart:
            # 0.3.3 stacks shape-[1] values to (T, 1) and datasets 3.6 calls float() on each row, which
            # the venv's numpy 2.4 refuses (TypeError; older numpy only warned). As 0-d values they stack
            # to (T,) like timestamp: the same scalar column and (1,) stats older numpy gives.
            for key in ("reward",):
                ds.episode_buffer[key] = [np.asarray(v).reshape(()) for v in ds.episode_buffer[key]]
        ds.save_episode()
    if hasattr(ds, "finalize"):  # 0.4.x closes its parquet writers; 0.3.3 writes as it goes
        ds.finalize()


def write_rolled(root: str) -> None:
    """lerobot 0.4.4 with limits of a few KB and 2 files a chunk dir: data parquet, mp4 and
    episode-metadata files roll over every episode or two, across chunk-000, chunk-001, ..."""

    def configure(ds) -> None:
        ds.meta.update_chunk_settings(chunks_size=2, data_files_size_in_mb=0.006, video_files_size_in_mb=0.0025)
        ds.meta.metadata_buffer_size = 1  # flush the episodes parquet every episode, so it rolls too

    _write_multi(root, configure)
    read(root, root + ".npz")


def write_v21(root: str) -> None:
    """lerobot 0.3.3 (v2.1): one parquet and one mp4 a camera per episode; 2 episodes a chunk dir."""

    def configure(ds) -> None:
        ds.meta.info["chunks_size"] = 2

    _write_multi(root, configure)
    read(root, root + ".npz")


def convert(root: str) -> None:
    """lerobot 0.4.4's v2.1 -> v3.0 converter on the local dataset at ROOT, with KB-sized limits so the
    result spans several files; the v2.1 original moves to ROOT_old. No hub: push_to_hub is off."""
    from pathlib import Path

    from lerobot.datasets.v30.convert_dataset_v21_to_v30 import convert_dataset

    path = Path(root)
    convert_dataset(path.name, root=str(path.parent), push_to_hub=False, data_file_size_in_mb=0.012, video_file_size_in_mb=0.02)
    read(root, root + ".npz")


def bench(root: str, indices: str) -> None:
    """Time `LeRobotDataset.__getitem__` as a training data-loader worker runs it: lerobot's own
    default video backend (torchcodec when it loads, else pyav) and one torch thread (PyTorch's
    DataLoader sets that in every worker). Prints wall and CPU seconds and the backend used."""
    import json
    import time

    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.datasets.video_utils import get_safe_default_codec

    torch.set_num_threads(1)
    backend, unavailable = get_safe_default_codec(), None
    if backend == "torchcodec":
        try:
            import torchcodec.decoders  # noqa: F401 - loads the FFmpeg libraries torchcodec needs
        except Exception as err:  # torchcodec raises a bare RuntimeError/OSError without system FFmpeg
            lines = str(err).splitlines()
            why = next((line.strip() for line in lines if "cannot open shared object" in line), lines[0] if lines else repr(err))
            backend, unavailable = "pyav", f"torchcodec does not load: {why[:200]}"
    ds = LeRobotDataset("recap_ray/bench", root=root, video_backend=backend)
    idx = np.load(indices)
    ds[int(idx[0])]  # warm-up: parquet cache and imports
    start, cpu = time.perf_counter(), time.process_time()
    for i in idx:
        ds[int(i)]
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    report = {"seconds": seconds, "cpu_seconds": cpu_seconds, "samples": len(idx), "cameras": len(ds.meta.video_keys), "backend": backend}
    if unavailable:
        report["default_backend_unavailable"] = unavailable
    print(json.dumps(report))


if __name__ == "__main__":
    modes = {"read": read, "write": write, "write_rolled": write_rolled, "write_v21": write_v21, "convert": convert, "bench": bench}
    modes[sys.argv[1]](*sys.argv[2:])
