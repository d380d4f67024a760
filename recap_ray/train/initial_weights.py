"""A run's initial weights, and how each process puts its own devices' shards of them on the mesh.

`Host`: arrays already in memory, as the value model's loaders give them (pistar bundles convert SigLIP's npz
and Gemma's keys on the host); every process holds them all and places its devices' shards.
`Checkpoint`: an openpi `params/` item (SFT, pi05_base, one of our policy runs; local or gs://), checked against
the model from its metadata alone and read by orbax straight into the mesh's shardings, cast to the model's
dtypes on read: each process reads only the stored chunks under its own devices' shards and keeps only those
shards, so no host holds the whole checkpoint (pi0.6's 3.35B weights are 13.4 GB in f32). Checkpoints written
from FSDP-split arrays (ours) are chunked by shard; a leaf stored as one chunk (openpi's training at its
default fsdp_devices=1) is read whole by each process that needs part of it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Mapping
from typing import Any, Protocol

import jax
import numpy as np
from jax.sharding import NamedSharding

from recap_ray.models import weights


class InitialWeights(Protocol):
    """Parameter leaves by their openpi path, not yet read."""

    @property
    def specs(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Each leaf's shape and dtype (the model's)."""
        ...

    def only(self, paths: Collection[str]) -> InitialWeights:
        """The leaves among `paths`."""
        ...

    def read(self) -> dict[str, np.ndarray]:
        """All leaves as host arrays."""
        ...

    def place(self, shardings: Mapping[str, NamedSharding]) -> dict[str, jax.Array]:
        """Every leaf as a global array with its sharding; each process provides its own devices' shards, every
        process calls this (a multi-process read is collective)."""
        ...


@dataclasses.dataclass(frozen=True)
class Host:
    """Host arrays (or ShapeDtypeStructs, for a program that is only compiled) by path."""

    leaves: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def specs(self) -> dict[str, jax.ShapeDtypeStruct]:
        return {p: jax.ShapeDtypeStruct(np.shape(v), v.dtype) for p, v in self.leaves.items()}

    def only(self, paths: Collection[str]) -> Host:
        return Host({p: v for p, v in self.leaves.items() if p in paths})

    def read(self) -> dict[str, np.ndarray]:
        return {p: np.asarray(v) for p, v in self.leaves.items()}

    def place(self, shardings: Mapping[str, NamedSharding]) -> dict[str, jax.Array]:
        return {path: jax.make_array_from_callback(np.shape(value), shardings[path], lambda index, v=value: np.asarray(v)[index])
                for path, value in self.leaves.items()}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """The leaves of an openpi `params/` item that a model takes; `open` checks the fit."""

    params_dir: str
    specs: dict[str, jax.ShapeDtypeStruct]

    @classmethod
    def open(cls, reference: Mapping[str, Any], params_dir: str | os.PathLike[str]) -> Checkpoint:
        """The checkpoint's leaves for a model whose parameter pure dict (arrays or ShapeDtypeStructs) is `reference`;
        raises `weights.CheckpointMismatch` listing every misfit (LoRA leaves may be absent: they keep their init).
        Reads metadata only."""
        return cls(os.fspath(params_dir), weights.fit(reference, params_dir))

    def only(self, paths: Collection[str]) -> Checkpoint:
        return Checkpoint(self.params_dir, {p: s for p, s in self.specs.items() if p in paths})

    def read(self) -> dict[str, np.ndarray]:
        return weights.restore_leaves(self.params_dir, self.specs)

    def place(self, shardings: Mapping[str, NamedSharding]) -> dict[str, jax.Array]:
        targets = {p: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=shardings[p]) for p, s in self.specs.items()}
        return weights.restore_leaves(self.params_dir, targets)
