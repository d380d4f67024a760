"""Initial weights read from a checkpoint straight into the mesh (`initial_weights.Checkpoint`), across two JAX
processes on CPU (two devices each): each process gets its devices' shards, cast on read, and reads from disk
only the chunks under them (tensorstore's own byte counter), where the checkpoint was written in shards as
training writes it; a checkpoint stored in whole-array chunks is read whole by each process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
ROWS, COLS = 512, 256  # 512 KiB of float32 per leaf: far above the checkpoint's metadata


def _expected() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((ROWS, COLS)).astype(np.float32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_process_reads_and_places_only_its_shards(tmp_path):
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-m", "tests.train.test_sharded_init", str(tmp_path), str(rank), str(port)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    leaf = ROWS * COLS * 4
    for r in reports:
        assert r["shards_ok"] and r["dtype"] == "bfloat16"
        assert r["whole_bytes_read"] > 0.8 * leaf, r  # one chunk (compressed a little): the whole leaf, whoever needs a part
        assert 0.4 < r["sharded_bytes_read"] / r["whole_bytes_read"] < 0.6, r  # its two of the four chunks


def _worker(root: Path, rank: int, port: int) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp
    import tensorstore as ts
    from jax.sharding import NamedSharding, PartitionSpec

    from recap_ray.models import weights
    from recap_ray.train import initial_weights

    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=rank)
    mesh = jax.make_mesh((4,), ("fsdp",))
    rows = NamedSharding(mesh, PartitionSpec("fsdp"))
    want = _expected()

    # as a training run writes it: each process its own shards (four chunks); and as a single host writes numpy
    sharded = jax.make_array_from_callback(want.shape, rows, lambda index: want[index])
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(root / "sharded", {weights.PARAMS_ITEM: {"w": {"value": sharded}}})
    weights.save(root / "whole", {"w": want})  # collective: the primary process writes numpy leaves

    def bytes_read() -> int:
        metrics = ts.experimental_collect_matching_metrics("/tensorstore/kvstore/file/bytes_read")
        return sum(v["value"] for m in metrics for v in m["values"])

    result: dict[str, Any] = {}
    for name in ("sharded", "whole"):
        source = initial_weights.Checkpoint.open({"w": jax.ShapeDtypeStruct(want.shape, jnp.bfloat16)}, root / name)
        before = bytes_read()
        placed = source.place({"w": rows})["w"]
        result[f"{name}_bytes_read"] = bytes_read() - before
        result["dtype"] = str(placed.dtype)
        result["shards_ok"] = result.get("shards_ok", True) and all(
            np.array_equal(np.asarray(s.data), want[s.index].astype(jnp.bfloat16)) for s in placed.addressable_shards)
    return result


if __name__ == "__main__":
    print(json.dumps(_worker(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))  # noqa: T201
