"""Orbax checkpoints of a training run, in openpi's step layout (see `models/checkpoints.py`).

Each step directory holds four items, written together by one `CheckpointManager.save` (async,
atomic: locally orbax writes a temporary directory and renames it when every item is done; in a
gs:// bucket it writes the step in place and adds `commit_success.txt` last):
`params` (what consumers load: openpi's params/ for the policy, pistar's {params, ema_params, step}
for the value model), `train_state` (flat dict of every leaf of `TrainState`, so optimizer state
of any structure round-trips and restores onto a new mesh), `data` (the loader position, JSON)
and `assets` (norm stats, tokenizer: plain files).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from recap_ray.models import checkpoints, weights

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- assets item


class AssetsHandler(ocp.CheckpointHandler):
    """Writes `{relative path: bytes}` as plain files under the item directory (primary host only)."""

    def save(self, directory: epath.Path, args: "AssetsSave") -> None:
        if jax.process_index() != 0:
            return
        for rel, data in args.files.items():
            path = directory / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def restore(self, directory: epath.Path, args: "AssetsRestore | None" = None) -> dict[str, bytes]:
        files = {str(p.relative_to(directory)): p for p in checkpoints.files(directory)}
        files.pop(ocp.path.atomicity.COMMIT_SUCCESS_FILE, None)  # orbax's mark of a finished item in a bucket
        return {rel: p.read_bytes() for rel, p in files.items()}


@ocp.args.register_with_handler(AssetsHandler, for_save=True)
@dataclasses.dataclass
class AssetsSave(ocp.args.CheckpointArgs):
    files: dict[str, bytes]


@ocp.args.register_with_handler(AssetsHandler, for_restore=True)
@dataclasses.dataclass
class AssetsRestore(ocp.args.CheckpointArgs):
    pass


# ----------------------------------------------------------------------------- flat state


def _key(path: tuple[Any, ...]) -> str:
    parts = []
    for entry in path:
        for attr in ("key", "idx", "name"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return ".".join(parts)


def flatten_state(tree: Any) -> dict[str, Any]:
    """Every leaf keyed by its dotted path (any pytree: nnx.State, optax namedtuples, None skipped)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    flat = {_key(p): leaf for p, leaf in leaves}
    if len(flat) != len(leaves):
        raise ValueError("train state has leaves whose paths collide when dotted")
    return flat


def unflatten_state(flat: dict[str, Any], like: Any) -> Any:
    """Inverse of `flatten_state` onto the structure of `like`; names missing or extra leaves."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    keys = [_key(p) for p, _ in leaves]
    missing = [k for k in keys if k not in flat]
    extra = sorted(set(flat) - set(keys))
    if missing or extra:
        raise ValueError(f"train_state does not match the model: missing {missing[:5]}, extra {extra[:5]}")
    return jax.tree_util.tree_unflatten(treedef, [flat[k] for k in keys])


# ----------------------------------------------------------------------------- manager


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
    """How often and how many."""

    keep: int = 2  # newest checkpoints kept (older ones deleted after a newer one finishes)
    keep_period: int | None = None  # also keep every step divisible by this forever
    async_save: bool = True  # write in the background while training goes on


ARRAY_URI_SCHEMES = ("gs",)  # buckets orbax-checkpoint (0.12.8) writes arrays to, through TensorStore's gcs driver


def check_storage(run_dir: epath.PathLike) -> None:
    """Refuse, before any work, a run directory orbax cannot save arrays in.

    Orbax builds TensorStore specs for local paths and gs:// only: an s3:// save fails inside the
    first checkpoint ("Checkpoint path should be absolute. Got s3:/..."), although TensorStore's s3
    driver itself works. google/orbax#2739 (open) adds S3.
    """
    scheme, sep, _ = str(run_dir).partition("://")
    if sep and scheme not in ARRAY_URI_SCHEMES:
        raise ValueError(f"{run_dir}: orbax-checkpoint cannot save checkpoints to {scheme}:// "
                         f"(local paths and {', '.join(s + '://' for s in ARRAY_URI_SCHEMES)} only)")  # fmt: skip


def manager(run_dir: epath.PathLike, options: CheckpointOptions = CheckpointOptions()) -> ocp.CheckpointManager:
    """The run's CheckpointManager over `RUN_DIR/checkpoints` (a local path or a gs:// URI)."""
    check_storage(run_dir)
    root = epath.Path(run_dir) / checkpoints.CHECKPOINTS_DIR
    return ocp.CheckpointManager(
        root,
        item_names=(checkpoints.PARAMS_ITEM, checkpoints.TRAIN_STATE_ITEM, checkpoints.DATA_ITEM, checkpoints.ASSETS_DIR),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=options.keep,
            keep_period=options.keep_period,
            enable_async_checkpointing=options.async_save,
            create=True,
        ),
    )


def save(
    mngr: ocp.CheckpointManager,
    step: int,
    *,
    params: Any,
    train_state: Any,
    data_position: dict[str, Any],
    assets: dict[str, bytes],
) -> bool:
    """Queue a save of `step` (returns at once when async); False when the step is already saved."""
    if step in mngr.all_steps():
        return False
    return mngr.save(
        step,
        args=ocp.args.Composite(
            **{
                checkpoints.PARAMS_ITEM: ocp.args.PyTreeSave(params),
                checkpoints.TRAIN_STATE_ITEM: ocp.args.PyTreeSave(flatten_state(train_state)),
                checkpoints.DATA_ITEM: ocp.args.JsonSave(data_position),
                checkpoints.ASSETS_DIR: AssetsSave(assets),
            }
        ),
    )


def restore_train_state(mngr: ocp.CheckpointManager, step: int, like: Any, shardings: Any) -> Any:
    """The train state of `step`, each leaf placed with `shardings` (a tree like `like`)."""
    flat_like = flatten_state(like)
    flat_shard = flatten_state(shardings)
    restore_args = {k: ocp.ArrayRestoreArgs(sharding=flat_shard[k], global_shape=v.shape, dtype=v.dtype)
                    for k, v in flat_like.items()}  # fmt: skip
    with weights.reading(mngr.directory / str(step), "damaged? move that step directory aside to resume from the one before"):
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(
                **{checkpoints.TRAIN_STATE_ITEM: ocp.args.PyTreeRestore(item=flat_like, restore_args=restore_args)}
            ),
        )
    return unflatten_state(dict(restored[checkpoints.TRAIN_STATE_ITEM]), like)


def restore_data_position(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The loader position saved with `step`."""
    restored = mngr.restore(step, args=ocp.args.Composite(**{checkpoints.DATA_ITEM: ocp.args.JsonRestore()}))
    return dict(restored[checkpoints.DATA_ITEM])

