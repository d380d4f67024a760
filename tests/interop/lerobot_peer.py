"""Runs inside the lerobot virtual environment (not ours): reads or writes a dataset with lerobot.

    python lerobot_peer.py read ROOT OUT.npz   # dump every column and decoded frame lerobot sees
    python lerobot_peer.py write ROOT          # write a small dataset with lerobot's own writer
    python lerobot_peer.py bench ROOT IDX.npy  # time lerobot's item access (all cameras) at global indices
"""

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
    {"read": read, "write": write, "bench": bench}[sys.argv[1]](*sys.argv[2:])
