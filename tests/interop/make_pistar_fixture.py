"""Write tests/models/fixtures/pistar_value/ by running pistar-world's OWN value-model code.

Not a test (pytest does not collect it): `tests/models/test_pistar_parity.py` reads what it writes, so
CI needs no upstream code. make_pistar_training_fixture.py reuses its `setup` (the tiny sizes) and
`observation`. Nothing of pistar is copied here; this script imports it from a checkout.

What it runs, all from ybpy/pistar-world c79186d667d87e10cd1a3e9ee924242753e0ee48:
- `openpi.models.value_model_config.ValueModelConfig(...).create(key)`: the real `ValueModel`
  (openpi SigLIP `mu/14` tower, `GemmaBlockRunner` on a tiny Gemma3, cross-attention, value head);
- `ValueModel.__call__`, `compute_value`, `compute_loss` (with `model.preprocess_observation`), float32
  and pistar's default bfloat16 SigLIP (`dtype="bfloat16"`);
- `TrainState` + `save_checkpoint` of `scripts/train_value.py` (read from that file with `ast` and run
  as is: importing the script drags in its data pipeline, lerobot, torch, wandb);
- `GemmaValueTokenizer.tokenize` of `scripts/train_value.py` (same `ast` route) on a sentencepiece
  model trained here with Gemma's special ids;
- `openpi_client.image_tools.resize_with_pad` (what `transforms.ResizeImages(224, 224)` calls) and
  `model.Observation.from_dict` (uint8 -> float32 in [-1, 1]).

The tiny size needs three substitutions, all outside pistar's files:
- the Gemma3 config: `dataclasses.replace(Gemma3_270M.config, ...)` (the vendored gemma class; RoPE
  bases, qk-norm, post-norms, query scaling, soft-caps stay Gemma3-270M's), handed to the two names
  pistar instantiates without arguments (`Gemma3_270M()` in value_model_config, `GemmaBlockRunner()`
  in value_model) with `functools.partial(..., config=tiny)`;
- SigLIP: the upstream variant string "mu/14" (width 32, depth 1, mlp 128, 2 heads, 14px patches);
- `img_projection = nnx.Linear(1152, ...)` hardcodes So400m's width: value_model's `nnx` name is
  wrapped so that a Linear asked for 1152 inputs gets the tower's width (no other Linear has 1152).
Torch, safetensors (upstream_stand_ins, beside this script) and openpi.models_pytorch get empty stand-ins: model.py and
array_typing.py import them for type annotations and PyTorch loaders only.

How it was run (2026-11-26, CPU, Python 3.11.7):
    git -C /work/.mirror/ybpy+pistar-world/repo archive HEAD src scripts gemma packages/openpi-client \
        pyproject.toml | tar -x -C /tmp/s13/v/pw            # HEAD = c79186d
    python3.11 -m venv /tmp/s13/venvs/pistar && PIP=/tmp/s13/venvs/pistar/bin/pip
    $PIP install jax==0.5.3 jaxlib==0.5.3 flax==0.10.2 orbax-checkpoint==0.11.13 ml-dtypes==0.4.1 \
        tensorstore==0.1.74 'numpy<2' 'etils[epath,epy,enp,edc,etree]==1.13.0' sentencepiece==0.2.0 einops \
        jaxtyping==0.2.36 beartype==0.19.0 ml_collections==1.0.0 pillow augmax dm-tree optax chex
    # tensorflow-cpu 2.15 pins ml-dtypes 0.2 but jax 0.5.3 needs 0.4 (see shared/spec/trees/README.md): --no-deps
    $PIP install --no-deps kauldron==1.3.0 tensorflow-cpu==2.15.0 tensorboard==2.15.2 \
        tensorflow-estimator==2.15.0 keras==2.15.0 tensorflow-io-gcs-filesystem==0.37.1
    $PIP install lark immutabledict packaging clu typeguard pandas mediapy grain tensorflow_datasets \
        tensorboard-data-server wrapt gast astunparse flatbuffers opt_einsum termcolor google-pasta h5py \
        libclang 'protobuf>=6,<7' 'numpy<2' ml-dtypes==0.4.1
    # resolved: numpy 1.26.4, protobuf 6.33.6, sentencepiece 0.2.0, pillow 13.0.0, optax 0.2.8,
    # tensorflow_datasets 4.9.10, grain 0.2.18 (TF prints "MessageFactory ... GetPrototype" errors on
    # import with protobuf 6; harmless: nothing of TF is on the value-model path)
    cd /work/main && nice /tmp/s13/venvs/pistar/bin/python tests/interop/make_pistar_fixture.py /tmp/s13/v/pw
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import upstream_stand_ins  # beside this script

os.environ.setdefault("JAX_PLATFORMS", "cpu")

OUT_DEFAULT = Path(__file__).resolve().parents[1] / "models" / "fixtures" / "pistar_value"
PISTAR_COMMIT = "c79186d667d87e10cd1a3e9ee924242753e0ee48"
SEED = 7  # model init of `params`; `ema_params` is a second init (seed + 1): the loader must pick it
STEP = 7  # step number of the saved checkpoint
SIGLIP_VARIANT = "mu/14"
SIGLIP_WIDTH = 32  # mu's width (checked against pistar's decode_variant)
# Tiny Gemma3: 7 layers of the real pattern (5 local, 1 global, 1 local); 4 query heads over 2 kv heads;
# sliding window 128 over 2 x 256 image tokens + 48 text tokens (so it cuts real attention).
GEMMA_OVERRIDES = dict(
    num_embed=400, embed_dim=32, hidden_dim=64, num_heads=4, head_dim=16, num_kv_heads=2,
    sliding_window_size=128,
)  # fmt: skip
NUM_LAYERS = 7
VOCAB = 400  # sentencepiece vocabulary = num_embed
CAMERAS = ("base_0_rgb", "wrist_0_rgb")
BATCH = 3
MODEL_PROMPTS = ("pick up the red block", "open the drawer and put the spoon inside  \n", "fold")
TOKENIZER_PROMPTS = (
    "pick up the red block",
    "Put the cup on the plate.  \n",
    "",
    "stack the green cube on the blue cube, then push the stack to the left corner of the table "
    "and wait until the arm is back home before opening the gripper again",
    "déposer la tasse ✓ 放到盘子上",
)
TARGETS = (-0.2513, -1.0, 0.0)  # scalar C51 targets: interior, both ends of the support
CORPUS = """pick up the red block and place it in the bowl
open the drawer and put the spoon inside
fold the towel in half then push it to the corner
stack the green cube on the blue cube
put the cup on the plate, then wait until the arm is back home
the robot grasps the handle and opens the door of the cabinet
"""


def _stand_ins() -> None:
    """Stand-ins for PyTorch-side imports (if not installed), and for pistar's PyTorch model package."""
    upstream_stand_ins.install()
    mp = types.ModuleType("openpi.models_pytorch")
    mp.pi0_pytorch = types.ModuleType("openpi.models_pytorch.pi0_pytorch")
    sys.modules.update({"openpi.models_pytorch": mp, "openpi.models_pytorch.pi0_pytorch": mp.pi0_pytorch})


def _from_script(script: Path, names: tuple[str, ...], namespace: dict) -> dict:
    """Run the top-level definitions `names` of `script` (unchanged source) in `namespace`."""
    tree = ast.parse(script.read_text(), filename=str(script))
    picked = [n for n in tree.body if getattr(n, "name", None) in names]
    missing = set(names) - {n.name for n in picked}
    if missing:
        raise LookupError(f"{script}: no top-level {sorted(missing)}")
    module = types.ModuleType(namespace["__name__"])
    module.__dict__.update(namespace)
    sys.modules[module.__name__] = module  # dataclasses look their class's module up
    code = compile(ast.Module(body=picked, type_ignores=[]), str(script), "exec", dont_inherit=True)
    exec(code, module.__dict__)  # noqa: S102
    return module.__dict__


class _NnxWidthShim:
    """`flax.nnx` for value_model, except Linear(1152, n) -> Linear(siglip_width, n)."""

    def __init__(self, nnx: types.ModuleType, width: int):
        self._nnx, self._width = nnx, width

    def __getattr__(self, name: str):
        return getattr(self._nnx, name)

    def Linear(self, in_features: int, out_features: int, **kw):  # noqa: N802
        return self._nnx.Linear(self._width if in_features == 1152 else in_features, out_features, **kw)


def _train_tokenizer(path: Path) -> None:
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(CORPUS)
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=f"{tmp}/sp", vocab_size=VOCAB, model_type="bpe",
            normalization_rule_name="identity",  # as Gemma's tokenizer (also keeps the file small)
            pad_id=0, eos_id=1, bos_id=2, unk_id=3, byte_fallback=True, character_coverage=1.0,
            num_threads=1, minloglevel=2,
        )  # fmt: skip
        shutil.copy(f"{tmp}/sp.model", path)


def _images(rng, batch: int):
    """uint8 (B, 224, 224, 3) per camera: 56x56 noise upscaled 4x (texture inside every 14px patch)."""
    import numpy as np

    small = rng.integers(0, 256, (batch, 56, 56, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, 4, axis=1), 4, axis=2)


def observation(images_u8: dict, masks: dict, tokens, token_mask, action_dim: int):
    """pistar's model input: `Observation.from_dict` (uint8 -> float32 in [-1, 1]) of the fixture's arrays."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from openpi.models import model as _model

    data = {
        "image": {cam: images_u8[cam].copy() for cam in CAMERAS},
        "image_mask": {cam: masks[cam] for cam in CAMERAS},
        "state": np.zeros((len(tokens), action_dim), np.float32),
        "tokenized_prompt": tokens,
        "tokenized_prompt_mask": token_mask,
    }
    return jax.tree.map(jnp.asarray, _model.Observation.from_dict(data))


@dataclasses.dataclass
class TinyPistar:
    """pistar's value-model configs at the fixture's tiny size, and the real sizes recorded before patching."""

    cfg32: object  # vmc.ValueModelConfig(dtype="float32")
    cfg16: object  # pistar's default dtype (bfloat16 SigLIP)
    tiny: object  # the tiny Gemma3 config
    tower: dict  # the SigLIP variant's sizes
    real: dict  # Gemma3-270M / So400m sizes of the unpatched code


def setup(pistar_root: Path) -> TinyPistar:
    """Put pistar-world on sys.path (with the stand-ins) and patch it to the tiny sizes (module docstring)."""
    pistar_root = pistar_root.resolve()
    sys.path[:0] = [str(pistar_root / d) for d in ("src", "packages/openpi-client/src", "gemma")]
    _stand_ins()

    import flax.nnx as nnx
    from gemma.gm.nn import _config as gemma_config
    from gemma.gm.nn import _gemma

    from openpi.models import model as _model
    from openpi.models import siglip as _siglip
    from openpi.models import value_model as vm
    from openpi.models import value_model_config as vmc

    # --- the real sizes (recorded so the test can hold our `value` config to them), before patching
    real_llm = _gemma.Gemma3_270M.config
    real_cfg = vmc.ValueModelConfig()
    real = {
        "gemma3_270m": {
            "num_embed": real_llm.num_embed, "embed_dim": real_llm.embed_dim, "hidden_dim": real_llm.hidden_dim,
            "num_heads": real_llm.num_heads, "head_dim": real_llm.head_dim, "num_kv_heads": real_llm.num_kv_heads,
            "sliding_window_size": real_llm.sliding_window_size,
            "attention_types": [t.name for t in real_llm.attention_types],
            "local_base_frequency": real_llm.local_base_frequency,
            "global_base_frequency": real_llm.global_base_frequency,
            "local_scale_factor": real_llm.local_scale_factor, "global_scale_factor": real_llm.global_scale_factor,
            "query_pre_attn_scalar": real_llm.query_pre_attn_scalar(), "use_qk_norm": real_llm.use_qk_norm,
            "use_post_attn_norm": real_llm.use_post_attn_norm, "use_post_ffw_norm": real_llm.use_post_ffw_norm,
            "final_logit_softcap": real_llm.final_logit_softcap, "attn_logits_soft_cap": real_llm.attn_logits_soft_cap,
        },
        "siglip": {**_siglip.decode_variant(real_cfg.siglip_variant), "variant": real_cfg.siglip_variant},
        "dtype": real_cfg.dtype,
        "max_token_len": real_cfg.max_token_len,
        "image_resolution": list(_model.IMAGE_RESOLUTION),
        "num_atoms": vm.NUM_ATOMS, "v_min": vm.V_MIN, "v_max": vm.V_MAX,
    }  # fmt: skip
    real["siglip"]["patch_size"] = real["siglip"]["patch_size"][0]

    # --- tiny sizes, through the vendored gemma config class and pistar's own constructors
    tiny = dataclasses.replace(
        _gemma.Gemma3_270M.config,
        attention_types=gemma_config.make_attention_layers_types(
            _gemma.GEMMA3_ATTENTION_PATTERN, num_layers=NUM_LAYERS
        ),
        **GEMMA_OVERRIDES,
    )
    vmc.Gemma3_270M = functools.partial(_gemma.Gemma3_270M, config=tiny)
    vm.GemmaBlockRunner = functools.partial(vm.GemmaBlockRunner, config=tiny)
    vm.nnx = _NnxWidthShim(nnx, SIGLIP_WIDTH)
    tower = _siglip.decode_variant(SIGLIP_VARIANT)
    assert tower["width"] == SIGLIP_WIDTH, tower
    tower["patch_size"] = tower["patch_size"][0]
    cfg32 = vmc.ValueModelConfig(dtype="float32", siglip_variant=SIGLIP_VARIANT)
    cfg16 = vmc.ValueModelConfig(siglip_variant=SIGLIP_VARIANT)  # pistar's default dtype: bfloat16
    assert (cfg32.embed_dim, cfg32.vocab_size, cfg32.max_token_len) == (32, VOCAB, 48), cfg32
    assert cfg16.dtype == "bfloat16"
    return TinyPistar(cfg32, cfg16, tiny, tower, real)


def main(pistar_root: Path, out: Path) -> None:
    pistar_root = pistar_root.resolve()
    pistar = setup(pistar_root)
    cfg32, cfg16, tiny, tower, real = pistar.cfg32, pistar.cfg16, pistar.tiny, pistar.tower, pistar.real

    import flax.nnx as nnx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from openpi_client import image_tools

    from openpi.models import model as _model
    from openpi.models import value_model as vm
    from openpi.shared import console

    model = cfg32.create(jax.random.key(SEED))
    params = nnx.state(model)  # create_train_state: params = nnx.state(model)
    ema_params = nnx.state(cfg32.create(jax.random.key(SEED + 1)))
    kinds = {v.type.__name__ for v in dict(params.flat_state()).values()}
    assert kinds == {"Param"}, kinds

    # --- the checkpoint, written by train_value.py's own TrainState / save_checkpoint
    script = pistar_root / "scripts" / "train_value.py"
    ns = _from_script(
        script, ("TrainState", "save_checkpoint", "GemmaValueTokenizer"),
        {"__name__": "train_value", "dataclasses": dataclasses, "nnx": nnx, "optax": optax, "Path": Path,
         "logging": logging, "console": console, "sys": sys, "jnp": jnp, "__file__": str(script)},
    )  # fmt: skip
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    state = ns["TrainState"](
        step=STEP, params=params, model_def=nnx.graphdef(model), opt_state=None, ema_params=ema_params
    )
    ns["save_checkpoint"](state, out / "checkpoint", STEP)

    # --- tokenizer: pistar's GemmaValueTokenizer on a sentencepiece model with Gemma's special ids
    _train_tokenizer(out / "tokenizer.model")
    tok = ns["GemmaValueTokenizer"](cfg32.max_token_len, tokenizer_path=str(out / "tokenizer.model"))
    tok_pairs = [tok.tokenize(p) for p in TOKENIZER_PROMPTS]
    model_pairs = [tok.tokenize(p) for p in MODEL_PROMPTS]

    # --- model inputs: uint8 frames, frame 1 has no wrist camera (black, mask False, as ValueInputs)
    rng = np.random.default_rng(SEED)
    images_u8 = {cam: _images(rng, BATCH) for cam in CAMERAS}
    images_u8["wrist_0_rgb"][1] = 0
    masks = {"base_0_rgb": np.array([True, True, True]), "wrist_0_rgb": np.array([True, False, True])}
    tokens = np.stack([t for t, _ in model_pairs]).astype(np.int32)
    token_mask = np.stack([m for _, m in model_pairs])
    targets = np.asarray(TARGETS, np.float32)
    target_dist = np.asarray(jax.nn.softmax(jnp.asarray(rng.normal(size=(BATCH, vm.NUM_ATOMS)), jnp.float32)))

    obs = observation(images_u8, masks, tokens, token_mask, cfg32.action_dim)
    key = jax.random.key(0)

    def run(m) -> dict[str, np.ndarray]:
        pre = _model.preprocess_observation(None, obs, train=False, image_keys=list(obs.images))
        return {
            "logits": np.asarray(m(pre), np.float32),
            "value": np.asarray(m.compute_value(key, obs), np.float32),
            "loss": np.asarray(m.compute_loss(key, obs, jnp.asarray(targets)), np.float32),
            "loss_dist": np.asarray(m.compute_loss(key, obs, jnp.asarray(target_dist)), np.float32),
        }

    outputs = {f"params_{k}": v for k, v in run(model).items()}
    nnx.update(model, ema_params)
    outputs |= {f"ema_{k}": v for k, v in run(model).items()}
    model16 = cfg16.create(jax.random.key(SEED))
    nnx.update(model16, ema_params)
    outputs |= {f"ema_bf16_{k}": v for k, v in run(model16).items()}
    outputs["twohot"] = np.asarray(vm.target_to_twohot(jnp.asarray(targets)))
    outputs["supports"] = np.asarray(vm.get_supports())

    # --- image preprocessing: resize_with_pad of non-square uint8 frames (up- and down-scaling), then
    # from_dict's uint8 -> [-1, 1] on all 256 values
    wide = rng.integers(0, 256, (1, 37, 61, 3), dtype=np.uint8)
    tall = np.repeat(np.repeat(rng.integers(0, 256, (1, 75, 45, 3), dtype=np.uint8), 4, axis=1), 4, axis=2)
    pre = {}
    for name, img in (("wide", wide), ("tall", tall)):
        pre |= {f"{name}_in": img, f"{name}_resized": image_tools.resize_with_pad(img, *_model.IMAGE_RESOLUTION)}
    levels = np.repeat(np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1), 3, axis=-1)
    scaled = _model.Observation.from_dict(
        {"image": {"x": levels.copy()}, "image_mask": {"x": np.ones(1, bool)}, "state": np.zeros((1, 1))}
    ).images["x"]
    pre |= {"levels_in": levels, "levels_float": np.asarray(scaled)}
    assert pre["levels_float"].dtype == np.float32

    np.savez_compressed(
        out / "inputs.npz",
        **{f"image_{cam}": images_u8[cam] for cam in CAMERAS},
        **{f"mask_{cam}": masks[cam] for cam in CAMERAS},
        tokens=tokens, token_mask=token_mask, targets=targets, target_dist=target_dist,
        prompt_tokens=np.stack([t for t, _ in tok_pairs]), prompt_masks=np.stack([m for _, m in tok_pairs]),
        **{f"pre_{k}": v for k, v in pre.items()},
    )  # fmt: skip
    np.savez_compressed(out / "outputs.npz", **outputs)

    versions = {p: importlib.metadata.version(p) for p in (
        "jax", "jaxlib", "flax", "orbax-checkpoint", "numpy", "ml-dtypes", "etils", "kauldron", "tensorflow-cpu",
        "sentencepiece", "pillow")}  # fmt: skip
    git = subprocess.run(["git", "-C", str(pistar_root), "rev-parse", "HEAD"], capture_output=True, text=True)
    commit = git.stdout.strip() if git.returncode == 0 else f"{PISTAR_COMMIT} (git archive)"
    meta = {
        "source": f"ybpy/pistar-world {commit}",
        "generator": "tests/interop/make_pistar_fixture.py",
        "python": sys.version.split()[0],
        "versions": versions,
        "seed": SEED,
        "step": STEP,
        "siglip_variant": SIGLIP_VARIANT,
        "siglip": {**tower, "image_size": _model.IMAGE_RESOLUTION[0]},
        "gemma": {**GEMMA_OVERRIDES, "num_layers": NUM_LAYERS,
                  "attention_types": [t.name for t in tiny.attention_types],
                  "local_base_frequency": tiny.local_base_frequency,
                  "global_base_frequency": tiny.global_base_frequency,
                  "query_pre_attn_scalar": tiny.query_pre_attn_scalar(), "use_qk_norm": tiny.use_qk_norm,
                  "final_logit_softcap": tiny.final_logit_softcap, "attn_logits_soft_cap": tiny.attn_logits_soft_cap},
        "cross_attention_heads": 8,
        "max_token_len": cfg32.max_token_len,
        "cameras": list(CAMERAS),
        "model_prompts": list(MODEL_PROMPTS),
        "tokenizer_prompts": list(TOKENIZER_PROMPTS),
        "real": real,
    }  # fmt: skip
    (out / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB)")
    for k, v in outputs.items():
        if v.ndim <= 1:
            print(k, v)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pistar_root", type=Path, help="pistar-world tree (src/, scripts/, gemma/, packages/)")
    parser.add_argument("--out", type=Path, default=OUT_DEFAULT)
    args = parser.parse_args()
    main(args.pistar_root, args.out)
