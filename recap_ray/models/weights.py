"""openpi `params/` checkpoints: restore, strict merge into a model tree, and save in the same layout.

On disk (orbax PyTree, OCDBT) the item is `{"params": tree}`. Checkpoints written by openpi training
end every leaf path in an extra `value` key (nnx.State); released ones (pi05_base) do not. Restoring
accepts both; saving always writes the `value` form, which openpi's `restore_params` strips again.
Our model's parameter paths are openpi's, so no key map is needed. Paths are used as given: a
`gs://` path goes to orbax/tensorstore untouched (readable only with the user's credentials);
nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx, traverse_util

from recap_ray.models import lora

logger = logging.getLogger(__name__)

PARAMS_ITEM = "params"  # the item directory inside a step directory


class CheckpointMismatch(ValueError):
    """A checkpoint's tree does not fit the model: lists missing, extra and mis-shaped paths."""

    def __init__(self, source: str, missing: list[str], extra: list[str], misshaped: list[str]):
        self.missing, self.extra, self.misshaped = missing, extra, misshaped
        parts = [f"{source}: checkpoint does not match the model"]
        for label, items in (("missing from the checkpoint", missing), ("not in the model", extra),
                             ("shape mismatch (checkpoint vs model)", misshaped)):  # fmt: skip
            if items:
                parts.append(f"{label} ({len(items)}):\n  " + "\n  ".join(items))
        super().__init__("\n".join(parts))


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict -> {'a/b/c': leaf}."""
    return traverse_util.flatten_dict(dict(tree), sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a/b/c': leaf} -> nested dict."""
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def _path(path: str | os.PathLike[str]) -> str:
    s = os.fspath(path)
    return s if "://" in s else str(Path(s).resolve())


def _leaf_metadata(path: str) -> dict[str, tuple[tuple[str, ...], Any]]:
    """{leaf path, trailing `value` stripped: (its key in the stored item, its metadata)} of an openpi params item.
    Reads metadata only."""
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    tree = getattr(meta, "tree", meta)
    if tree is None:  # orbax logs why and returns nothing
        raise ValueError(f"{path}: no readable checkpoint metadata (not an orbax checkpoint, or a damaged one)")
    tree = dict(tree)
    if PARAMS_ITEM not in tree:
        raise ValueError(f"{path}: not an openpi params checkpoint (top-level keys {sorted(tree)}, expected 'params')")
    flat = traverse_util.flatten_dict({PARAMS_ITEM: tree[PARAMS_ITEM]})
    strip = bool(flat) and all(key[-1] == "value" for key in flat)
    return {"/".join(key[1:-1] if strip else key[1:]): (key, m) for key, m in flat.items()}


def _read(path: str, args: Mapping[str, ocp.RestoreArgs], stored: Mapping[str, tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    """The leaves `args` names ({leaf path: how to restore it}), and no others (orbax partial restore); `stored`:
    `_leaf_metadata(path)`."""
    item = traverse_util.unflatten_dict({stored[p][0]: stored[p][1] for p in args})
    restore_args = traverse_util.unflatten_dict({stored[p][0]: a for p, a in args.items()})
    with reading(path), ocp.PyTreeCheckpointer() as ckptr:
        out = traverse_util.flatten_dict(ckptr.restore(path, ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)))
    return {p: out[stored[p][0]] for p in args}


# tensorstore's status codes for stored bytes that cannot be had (missing, cut short, corrupt, unreachable)
STORAGE_STATUS = ("NOT_FOUND", "DATA_LOSS", "OUT_OF_RANGE", "FAILED_PRECONDITION", "PERMISSION_DENIED", "UNAVAILABLE",
                  "DEADLINE_EXCEEDED", "ABORTED")  # fmt: skip


@contextlib.contextmanager
def reading(path: str | os.PathLike[str], hint: str = "damaged, or copied in part?") -> Iterator[None]:
    """Inside: an orbax read that fails on the stored bytes becomes an OSError naming the checkpoint and, from
    tensorstore's innermost error, the leaf and the file (orbax's own message prints tensorstore's spec). Other
    errors (a tree that does not match, a bug) pass unchanged."""
    try:
        yield
    except Exception as err:
        chain = [err]
        while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and all(nxt is not e for e in chain):
            chain.append(nxt)  # a context chain may loop
        reason = str(chain[-1]).splitlines()[0] if str(chain[-1]) else ""
        if reason.split(":", 1)[0] not in STORAGE_STATUS:
            raise
        raise OSError(f"{os.fspath(path)}: cannot read its arrays ({hint}): {reason}") from err


def restore(params_dir: str | os.PathLike[str], *, dtype: Any = None) -> dict[str, Any]:
    """Read an openpi `params/` item as a pure dict of numpy arrays (trailing `value` keys stripped).

    dtype: cast every leaf on read (serving uses bfloat16); None keeps the stored dtypes.
    """
    stored = _leaf_metadata(path := _path(params_dir))
    return unflatten(_read(path, {p: ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype) for p in stored}, stored))


def _check_fit(reference: Mapping[str, Any], got: Mapping[str, Any], may_be_missing: Callable[[str], bool], source: str) -> None:
    """Raise CheckpointMismatch listing every reference path `got` lacks (unless `may_be_missing`), every path of
    `got` the reference lacks, and every shape mismatch ({path: anything with a shape} both)."""
    missing = sorted(p for p in reference if p not in got and not may_be_missing(p))
    extra = sorted(p for p in got if p not in reference)
    misshaped = sorted(
        f"{p}: {tuple(got[p].shape)} vs {tuple(reference[p].shape)}"
        for p in reference
        if p in got and tuple(got[p].shape) != tuple(reference[p].shape)
    )
    if missing or extra or misshaped:
        raise CheckpointMismatch(source, missing, extra, misshaped)


def fit(
    reference: Mapping[str, Any], params_dir: str | os.PathLike[str], *, may_be_missing: Callable[[str], bool] = lora.is_lora_path
) -> dict[str, jax.ShapeDtypeStruct]:
    """The reference's shape and dtype ({path: ShapeDtypeStruct}) for every leaf `params_dir` has, once its metadata
    is checked against `reference` (a model's parameter pure dict) as `merge` checks. Reads no array."""
    ref, stored = flatten(reference), _leaf_metadata(_path(params_dir))
    _check_fit(ref, {p: m for p, (_, m) in stored.items()}, may_be_missing, os.fspath(params_dir))
    return {p: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype) for p, x in ref.items() if p in stored}


def restore_leaves(params_dir: str | os.PathLike[str], targets: Mapping[str, jax.ShapeDtypeStruct]) -> dict[str, Any]:
    """The leaves `targets` names, each cast to its target's dtype on read: a jax.Array laid out as its target's
    sharding where it has one (each process reads the stored chunks under its own devices' shards and keeps only
    those; collective across processes), else a host numpy array."""
    def args(t: jax.ShapeDtypeStruct) -> ocp.RestoreArgs:
        if t.sharding is None:
            return ocp.RestoreArgs(restore_type=np.ndarray, dtype=t.dtype)
        return ocp.ArrayRestoreArgs(sharding=t.sharding, dtype=t.dtype, global_shape=tuple(t.shape))

    if not targets:
        return {}
    stored = _leaf_metadata(path := _path(params_dir))
    unknown = sorted(set(targets) - set(stored))
    if unknown:
        raise KeyError(f"{path}: no such leaves in the checkpoint: {unknown[:5]}")
    return _read(path, {p: args(t) for p, t in targets.items()}, stored)


def merge(
    reference: Mapping[str, Any],
    loaded: Mapping[str, Any],
    *,
    may_be_missing: Callable[[str], bool] = lora.is_lora_path,
    source: str = "checkpoint",
) -> dict[str, Any]:
    """Loaded leaves cast to the reference's dtypes, keyed as the reference; strict otherwise.

    Reference paths absent from `loaded` are left out of the result when `may_be_missing(path)`
    (LoRA leaves keep their fresh init, as openpi does) and are an error otherwise; loaded paths
    absent from the reference, and shape mismatches, are always errors. All are listed at once.
    """
    ref, got = flatten(reference), flatten(loaded)
    _check_fit(ref, got, may_be_missing, source)
    kept = [p for p in ref if p not in got]
    if kept:
        logger.info("%s: %d leaves not in the checkpoint keep their init (e.g. %s)", source, len(kept), kept[0])
    return unflatten({p: np.asarray(got[p]).astype(ref[p].dtype, copy=False) for p in ref if p in got})  # no copy when the dtype is right


def model_params(model: nnx.Module) -> dict[str, Any]:
    """The model's parameters as openpi's pure dict."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def load_leaves(reference: Mapping[str, Any], params_dir: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The leaves of `params_dir` for a model whose parameter pure dict (arrays or ShapeDtypeStructs) is
    `reference`: {path: host array} in the reference's dtypes (strict: `fit`; LoRA leaves may be absent)."""
    return restore_leaves(params_dir, fit(reference, params_dir))


def load_into(model: nnx.Module, params_dir: str | os.PathLike[str]) -> None:
    """Restore `params_dir` and write it into `model` in place (strict merge, LoRA leaves may be absent)."""
    loaded = load_leaves(model_params(model), params_dir)
    with_leaves(model, {path: jnp.asarray(value) for path, value in loaded.items()})


def with_leaves(model: nnx.Module, leaves: Mapping[str, Any]) -> nnx.Module:
    """`model` with the parameter leaves `leaves` ({path: array}) names replaced, in place (traceable); the others
    keep theirs."""
    state = nnx.state(model, nnx.Param)
    flat = flatten(nnx.to_pure_dict(state))
    unknown = sorted(set(leaves) - set(flat))
    if unknown:
        raise KeyError(f"not parameters of the model: {unknown[:5]}")
    flat.update(leaves)
    nnx.replace_by_pure_dict(state, unflatten(flat))
    nnx.update(model, state)
    return model


def save(params_dir: str | os.PathLike[str], params: nnx.Module | Mapping[str, Any]) -> Path | str:
    """Write `params` (a model or a pure dict) as openpi's `params/` item: {"params": {..., leaf: {"value": x}}}."""
    tree = model_params(params) if isinstance(params, nnx.Module) else dict(params)
    path = _path(params_dir)
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(path, openpi_item(tree, as_numpy=True))
    return path


def openpi_item(params: Mapping[str, Any], *, as_numpy: bool = False) -> dict[str, Any]:
    """openpi's `params/` item tree: {"params": {..., leaf: {"value": x}}} (arrays kept unless `as_numpy`)."""
    conv = np.asarray if as_numpy else (lambda x: x)
    return {PARAMS_ITEM: unflatten({f"{p}/value": conv(v) for p, v in flatten(params).items()})}


def lora_paths(tree: Mapping[str, Any]) -> list[str]:
    """Paths of LoRA leaves in a tree."""
    return sorted(p for p in flatten(tree) if lora.is_lora_path(p))
