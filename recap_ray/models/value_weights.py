"""Value-model weights: the vlm_ckpt bundle, pistar value checkpoints, and saving in pistar's layout.

Bundle (`--vlm-bundle DIR`, else $OPENPI_VLM_CKPT_DIR):
    DIR/gemma-3-270m/[step_XXXXXXXX/]   orbax checkpoint
    DIR/siglip2-so400m-patch14-224-jax/siglip2_so400m14_224.npz   big_vision SigLIP2 weights
    DIR/tokenizer.model                  Gemma3 sentencepiece model
The forks read `gemma-3-270m/` two ways; which one a bundle holds is read from its orbax metadata:
  "value_tree": a whole value-model snapshot `{params, ema_params, step}` (Destiny000621/RECAP);
  "raw_gemma":  a Gemma3 checkpoint (flat `transformer/...` or nested names), SigLIP from the npz and
                fresh heads (ybpy/pistar-world).
Value checkpoints: `<dir>/step_{step:08d}/`, an orbax PyTree `{params, ema_params, step}` whose
params are the model's pure dict (paths as in spec/trees/value_model.tsv).
Bundles and checkpoints are read through `etils.epath`, so they may be local or in a bucket (gs://).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from recap_ray.models import value as value_lib
from recap_ray.models import weights
from recap_ray.models.value_config import ValueModelConfig

logger = logging.getLogger(__name__)

BUNDLE_ENV_VAR = "OPENPI_VLM_CKPT_DIR"
GEMMA_SUBDIR = "gemma-3-270m"
SIGLIP_NPZ = "siglip2-so400m-patch14-224-jax/siglip2_so400m14_224.npz"
TOKENIZER_FILE = "tokenizer.model"
LAYOUT_VALUE_TREE = "value_tree"
LAYOUT_RAW_GEMMA = "raw_gemma"
# Top-level modules a bundle may lack; they keep their fresh init (pistar's missing regex).
HEAD_MODULES = ("img_projection", "cross_attention", "cross_attn_norm", "value_head")
_ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "checkpoint", "manifest.ocdbt")

Flat = dict[str, Any]
flatten, unflatten = weights.flatten, weights.unflatten


def _strip_value_suffix(flat: Flat) -> Flat:
    """openpi/nnx State dumps end every path in `/value`; drop it when all leaves have it."""
    if flat and all(k.endswith("/value") for k in flat):
        return {k[: -len("/value")]: v for k, v in flat.items()}
    return flat


# ----------------------------------------------------------------------------- orbax access


def find_orbax_dir(path: epath.PathLike) -> epath.Path:
    """`path` itself if it is an orbax checkpoint, else its lexicographically last `step_*` child."""
    path = epath.Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {path}")
    if any((path / m).exists() for m in _ORBAX_MARKERS):
        return path
    steps = sorted(p for p in path.iterdir() if p.is_dir() and p.name.startswith("step_"))
    if not steps:
        raise FileNotFoundError(f"{path}: neither an orbax checkpoint ({', '.join(_ORBAX_MARKERS)}) nor step_* dirs")
    if not any((steps[-1] / m).exists() for m in _ORBAX_MARKERS):
        raise FileNotFoundError(f"{steps[-1]}: no orbax checkpoint files ({', '.join(_ORBAX_MARKERS)})")
    return steps[-1]


def tree_metadata(path: epath.PathLike) -> dict[str, Any]:
    """The stored tree (leaves = orbax metadata), read without loading arrays."""
    meta = ocp.PyTreeCheckpointer().metadata(path)
    meta = getattr(meta, "item_metadata", meta)  # orbax >= 0.12: StepMetadata
    meta = getattr(meta, "tree", meta)
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: orbax metadata is not a dict tree ({type(meta).__name__})")
    return meta


def restore_numpy(path: epath.PathLike, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Restore the checkpoint at `path` as numpy arrays, only top-level `keys` when given."""
    meta = tree_metadata(path)
    if keys is not None:
        missing = [k for k in keys if k not in meta]
        if missing:
            raise KeyError(f"{path}: checkpoint lacks top-level {missing}; it has {sorted(meta)}")
        meta = {k: meta[k] for k in keys}
    is_leaf = lambda x: not isinstance(x, dict)  # noqa: E731
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta, is_leaf=is_leaf)
    args = ocp.args.PyTreeRestore(item=meta, restore_args=restore_args, partial_restore=keys is not None)
    with weights.reading(path):
        return ocp.PyTreeCheckpointer().restore(path, args=args)


def detect_layout(meta: dict[str, Any], where: epath.PathLike) -> str:
    """"value_tree" for `{params: {img, llm, ...}, ...}`, "raw_gemma" for a Gemma3 checkpoint."""
    params = meta.get("params")
    if isinstance(params, dict):
        inner = flatten(params)
        if any(k.startswith(("llm/", "img/")) for k in inner):
            return LAYOUT_VALUE_TREE
        if _looks_like_gemma(inner):  # a gemma checkpoint saved as {"params": ...}
            return LAYOUT_RAW_GEMMA
    if _looks_like_gemma(flatten(meta)):
        return LAYOUT_RAW_GEMMA
    raise ValueError(
        f"{where}: unrecognised checkpoint: top-level keys {sorted(meta)[:8]}; expected "
        "{params, ema_params, step} with params/llm, params/img, or Gemma3 `transformer/...` names"
    )


def _looks_like_gemma(flat: Flat) -> bool:
    names = {k.removeprefix("params/").removeprefix("transformer/") for k in flat}
    return any(n.startswith("embedder/") for n in names) and any(n.startswith("layer_0/") for n in names)


# ----------------------------------------------------------------------------- key maps


def gemma_to_llm(tree: dict[str, Any]) -> Flat:
    """A Gemma3 checkpoint tree (flat `transformer/layer_0/attn/q_einsum: {w}` or nested) ->
    flat `llm/...` names; `mlp/{gating_einsum,linear}/w` lose their `/w` (gemma's shared scope)."""
    out: Flat = {}
    for key, leaf in flatten(tree).items():
        name = key.removeprefix("params/").removeprefix("transformer/")
        name = re.sub(r"(/mlp/(gating_einsum|linear))/w$", r"\1", name)
        out[f"llm/{name}"] = leaf
    return out


def siglip_npz_to_img(npz_path: epath.PathLike) -> Flat:
    """big_vision SigLIP2 npz -> flat `img/...` names; unscanned `encoderblock_N` get stacked."""
    with epath.Path(npz_path).open("rb") as f, np.load(f, allow_pickle=False) as data:
        flat = {k.removeprefix("params/"): data[k] for k in data.files}
    img = {k[len("img/"):]: v for k, v in flat.items() if k.startswith("img/")}
    if not img:
        raise KeyError(f"{npz_path}: no `img/` (or `params/img/`) arrays; first keys {sorted(flat)[:5]}")
    blocks: dict[int, Flat] = {}
    out: Flat = {}
    for key, arr in img.items():
        m = re.fullmatch(r"Transformer/encoderblock_(\d+)/(.*)", key)
        if m:
            blocks.setdefault(int(m.group(1)), {})[m.group(2)] = arr
        else:
            out[f"img/{key}"] = arr
    if blocks:
        order = sorted(blocks)
        if order != list(range(len(order))):
            raise KeyError(f"{npz_path}: encoder blocks {order} are not 0..{len(order) - 1}")
        for leaf in blocks[0]:
            out[f"img/Transformer/encoderblock/{leaf}"] = np.stack([blocks[i][leaf] for i in order])
    return out


# ----------------------------------------------------------------------------- merging


def check_and_cast(
    loaded: Flat, reference: Flat, *, source: str, may_miss: tuple[str, ...] = ()
) -> tuple[Flat, list[str]]:
    """Strict merge (`weights.merge`): loaded leaves cast to the reference dtypes, keyed as the reference.

    Missing paths and shape mismatches raise `weights.CheckpointMismatch` listing them, except that
    paths under a top-level module in `may_miss` may be absent (returned as the 2nd item). Loaded
    entries the model lacks are dropped with a warning first (a bundle's SigLIP text tower, extras).
    """
    extra = sorted(k for k in loaded if k not in reference)
    if extra:
        logger.warning("%s: dropping %d entries the model lacks, e.g. %s", source, len(extra), extra[:5])
    kept = {k: v for k, v in loaded.items() if k in reference}
    merged = flatten(
        weights.merge(unflatten(reference), unflatten(kept), may_be_missing=lambda p: p.split("/")[0] in may_miss,
                      source=source)  # fmt: skip
    )
    return merged, [k for k in reference if k not in merged]


def fresh_leaves(config: ValueModelConfig, paths: list[str], rng: int = 0) -> Flat:
    """Fresh-init values of `paths` only (jit prunes every other initializer)."""
    if not paths:
        return {}

    def init() -> Flat:
        flat = flatten(nnx.to_pure_dict(nnx.state(config.create(rng), nnx.Param)))
        return {p: flat[p] for p in paths}

    return jax.tree.map(np.asarray, jax.jit(init)())


def checked_params(config: ValueModelConfig, params: dict[str, Any]) -> Flat:
    """A full pure-dict `params` tree checked against the model (`check_and_cast`), flat, in the model's dtypes."""
    reference = flatten(nnx.to_pure_dict(nnx.state(config.abstract_model())))
    return check_and_cast(flatten(params), reference, source=f"{config.name} params")[0]


def model_from_params(config: ValueModelConfig, params: dict[str, Any]) -> value_lib.ValueModel:
    """Build the model directly from a full pure-dict `params` tree (no random init of the backbones)."""
    graphdef, state = nnx.split(config.abstract_model())
    nnx.replace_by_pure_dict(state, unflatten({k: jnp.asarray(v) for k, v in checked_params(config, params).items()}))
    return nnx.merge(graphdef, state)


params_of = weights.model_params


# ----------------------------------------------------------------------------- bundle


@dataclasses.dataclass(frozen=True)
class Bundle:
    """Where a vlm_ckpt bundle's parts are and which reading of `gemma-3-270m/` it holds."""

    root: epath.Path  # bundle directory
    gemma_checkpoint: epath.Path  # the orbax checkpoint dir under gemma-3-270m/
    layout: str  # LAYOUT_VALUE_TREE or LAYOUT_RAW_GEMMA
    siglip_npz: epath.Path  # SigLIP2 npz path (may not exist for a value_tree bundle)
    tokenizer: epath.Path  # Gemma3 sentencepiece model


def resolve_bundle_dir(bundle_dir: epath.PathLike | None) -> epath.Path:
    """`--vlm-bundle DIR` if given, else $OPENPI_VLM_CKPT_DIR (pistar's variable)."""
    if bundle_dir is None:
        bundle_dir = os.environ.get(BUNDLE_ENV_VAR)
        if not bundle_dir:
            raise FileNotFoundError(f"no --vlm-bundle given and ${BUNDLE_ENV_VAR} is not set")
    return epath.Path(bundle_dir).expanduser()


def inspect_bundle(bundle_dir: epath.PathLike | None) -> Bundle:
    """Locate the bundle's files and read its layout from the orbax metadata; missing files raise."""
    root = resolve_bundle_dir(bundle_dir)
    gemma_dir, tokenizer = root / GEMMA_SUBDIR, root / TOKENIZER_FILE
    absent = [str(p) for p in (gemma_dir, tokenizer) if not p.exists()]
    if absent:
        raise FileNotFoundError(f"vlm bundle {root}: missing {absent}")
    ckpt = find_orbax_dir(gemma_dir)
    layout = detect_layout(tree_metadata(ckpt), ckpt)
    siglip_npz = root / SIGLIP_NPZ
    if layout == LAYOUT_RAW_GEMMA and not siglip_npz.is_file():
        raise FileNotFoundError(f"vlm bundle {root}: raw Gemma3 checkpoint but no SigLIP weights at {siglip_npz}")
    logger.info("vlm bundle %s: %s layout at %s", root, layout, ckpt)
    return Bundle(root, ckpt, layout, siglip_npz, tokenizer)


def load_bundle(
    config: ValueModelConfig, bundle_dir: epath.PathLike | None = None, *, use_ema: bool = False, rng: int = 0
) -> dict[str, Any]:
    """Full pure-dict params for `config` from a vlm bundle (either layout); absent heads get fresh init.

    For a value_tree bundle `use_ema` picks `ema_params` over `params` (pistar's training loader
    takes `params`). SigLIP comes from the value tree when it has `img/`, else from the npz.
    """
    bundle = inspect_bundle(bundle_dir)
    reference = flatten(config.abstract_params())
    if bundle.layout == LAYOUT_VALUE_TREE:
        key = "ema_params" if use_ema else "params"
        loaded = _strip_value_suffix(flatten(restore_numpy(bundle.gemma_checkpoint, (key,))[key]))
        source = f"{bundle.gemma_checkpoint}[{key}]"
    else:
        loaded = gemma_to_llm(restore_numpy(bundle.gemma_checkpoint))
        source = str(bundle.gemma_checkpoint)
    if not any(k.startswith("img/") for k in loaded):
        if not bundle.siglip_npz.is_file():
            raise FileNotFoundError(f"{source} has no img/ parameters and {bundle.siglip_npz} is missing")
        loaded.update(siglip_npz_to_img(bundle.siglip_npz))
        source += f" + {bundle.siglip_npz}"
    checked, missing = check_and_cast(loaded, reference, source=source, may_miss=HEAD_MODULES)
    if missing:
        logger.info("%s: %d head parameters not in the bundle keep fresh init: %s", source, len(missing), missing)
        checked.update(fresh_leaves(config, missing, rng))
    return unflatten(checked)


# ----------------------------------------------------------------------------- value checkpoints


def load_checkpoint(
    checkpoint: epath.PathLike, *, use_ema: bool = True, config: ValueModelConfig | None = None
) -> tuple[dict[str, Any], int]:
    """(params, step) from a pistar value checkpoint: a `step_*` dir or a parent (last `step_*`).

    `use_ema` takes `ema_params` when present (pistar's labelling default), else `params`.
    With `config`, paths and shapes are checked (every model parameter must be present).
    """
    path = find_orbax_dir(checkpoint)
    meta = tree_metadata(path)
    for key in ("params", "step"):
        if key not in meta:
            raise KeyError(f"{path}: not a value checkpoint, top-level keys {sorted(meta)} lack {key!r}")
    key = "ema_params" if use_ema and "ema_params" in meta else "params"
    if use_ema and key == "params":
        logger.warning("%s: no ema_params; using params", path)
    restored = restore_numpy(path, (key, "step"))
    params = _strip_value_suffix(flatten(restored[key]))
    if config is not None:
        params, _ = check_and_cast(params, flatten(config.abstract_params()), source=f"{path}[{key}]")
    logger.info("loaded %s from %s (step %s)", key, path, int(restored["step"]))
    return unflatten(params), int(restored["step"])


def save_checkpoint(
    checkpoint_dir: str | Path, step: int, params: dict[str, Any], ema_params: dict[str, Any] | None = None
) -> Path:
    """Write `<checkpoint_dir>/step_{step:08d}` as pistar does; an existing step is left untouched."""
    path = (Path(checkpoint_dir) / f"step_{step:08d}").resolve()
    if path.exists():
        logger.warning("checkpoint %s exists; not overwriting", path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    item: dict[str, Any] = {"params": params, "step": int(step)}
    if ema_params is not None:
        item["ema_params"] = ema_params
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(path, item)
    logger.info("saved value checkpoint %s", path)
    return path


def load_model(
    config: ValueModelConfig,
    *,
    checkpoint: epath.PathLike | None = None,
    bundle_dir: epath.PathLike | None = None,
    use_ema: bool = True,
) -> value_lib.ValueModel:
    """A ready model: from a value checkpoint when given, else from the vlm bundle (or its env var)."""
    return model_from_params(config, load_params(config, checkpoint=checkpoint, bundle_dir=bundle_dir, use_ema=use_ema))


def load_params(
    config: ValueModelConfig,
    *,
    checkpoint: epath.PathLike | None = None,
    bundle_dir: epath.PathLike | None = None,
    use_ema: bool = True,
) -> dict[str, Any]:
    """`load_model`'s parameters as a pure dict of host arrays (the trainer lays them out on its mesh itself)."""
    if checkpoint is not None:
        return load_checkpoint(checkpoint, use_ema=use_ema, config=config)[0]
    return load_bundle(config, bundle_dir, use_ema=False)
