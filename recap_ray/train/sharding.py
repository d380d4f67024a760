"""Device mesh and FSDP shardings (openpi's rule), plus global batches from per-process data.

Mesh axes ("batch", "fsdp"): batches split over both; a parameter or optimizer leaf of at least
`min_bytes` is split along its largest axis divisible by the fsdp size, everything else is
replicated. The mesh spans every process's devices, so the same code runs on one CPU or many hosts.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"
FSDP_AXIS = "fsdp"
DATA_AXES = (BATCH_AXIS, FSDP_AXIS)
MIN_SHARD_BYTES = 4 * 2**20  # openpi: arrays under 4 MiB stay replicated


def make_mesh(fsdp_devices: int | None = None, devices: list[jax.Device] | None = None) -> Mesh:
    """A (devices/fsdp, fsdp) mesh over `devices` (default: all global devices); fsdp None = all of them
    (pistar's auto)."""
    devices = jax.devices() if devices is None else list(devices)
    fsdp = len(devices) if fsdp_devices is None else fsdp_devices
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"fsdp_devices={fsdp} does not divide the {len(devices)} devices")
    grid = np.asarray(devices).reshape(len(devices) // fsdp, fsdp)
    return Mesh(grid, DATA_AXES)


def leaf_spec(shape: tuple[int, ...], itemsize: int, fsdp_size: int, min_bytes: int = MIN_SHARD_BYTES) -> PartitionSpec:
    """Shard the largest axis divisible by `fsdp_size` when the leaf is big enough; else replicate."""
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) * itemsize < min_bytes:
        return PartitionSpec()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp_size == 0:
            spec: list[str | None] = [None] * len(shape)
            spec[axis] = FSDP_AXIS
            return PartitionSpec(*spec)
    return PartitionSpec()


def fsdp_shardings(tree: Any, mesh: Mesh, min_bytes: int = MIN_SHARD_BYTES) -> Any:
    """NamedShardings for every array leaf of `tree` (arrays or ShapeDtypeStructs)."""
    fsdp_size = mesh.shape[FSDP_AXIS]

    def one(leaf: Any) -> NamedSharding:
        if not hasattr(leaf, "shape") or not leaf.shape:
            return NamedSharding(mesh, PartitionSpec())
        return NamedSharding(mesh, leaf_spec(tuple(leaf.shape), np.dtype(leaf.dtype).itemsize, fsdp_size, min_bytes))

    return jax.tree.map(one, tree)


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of a value every device holds whole."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXES))


def global_batch(local: Any, mesh: Mesh) -> Any:
    """Per-process numpy batch (this process's contiguous slice) -> global jax arrays sharded on batch."""
    sharding = data_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)
