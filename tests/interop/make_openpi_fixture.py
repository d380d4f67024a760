"""Write tests/models/fixtures/openpi_pi05/: a tiny pi0.5 run through openpi's OWN code (not collected by pytest).

`tests/models/test_openpi_parity.py` loads the checkpoint written here through our loader and checks that our
model and tokenizer reproduce what openpi (and pistar, for the advantage clause) computed. Nothing of openpi is
copied into this repository: this script imports openpi from a source tree given on the command line.

How the committed fixture was made:
  openpi  Physical-Intelligence/openpi 15a9616a00943ada6c20a0f158e3adb39df2ccac (src/ on sys.path)
  pistar  ybpy/pistar 35fe827df1d34ac3fd5459009eb4250f05441e60 (only its tokenizer, and its pi0.py for the
          pistar-weighted loss, each in a child process of this script)
  openpi's pins from PyPI, CPU only (resolved versions in meta.json):

    python3.11 -m venv /tmp/s13/venvs/openpi
    /tmp/s13/venvs/openpi/bin/pip install jax==0.5.3 jaxlib==0.5.3 flax==0.10.2 orbax-checkpoint==0.11.13 \
        ml-dtypes==0.4.1 tensorstore==0.1.74 'numpy<2' einops jaxtyping==0.2.36 beartype==0.19.0 augmax \
        dm-tree sentencepiece chex==0.1.90 ml_collections==1.0.0 typing-extensions etils filelock fsspec \
        tqdm-loggable numpydantic pydantic
    OPENPI_COMMIT=15a9616a00943ada6c20a0f158e3adb39df2ccac PISTAR_COMMIT=35fe827df1d34ac3fd5459009eb4250f05441e60 \
    JAX_PLATFORMS=cpu nice /tmp/s13/venvs/openpi/bin/python tests/interop/make_openpi_fixture.py \
        /tmp/s13/p/openpi --pistar /tmp/s13/p/pistar    # trees from `git archive HEAD` of the fetched mirrors
  (about a minute; rerunning gives bit-identical outputs; the *_COMMIT variables only go into meta.json)

Patched in this process only (module attributes; no openpi file changes): stand-ins for PyTorch-side imports
(upstream_stand_ins, openpi.models_pytorch, openpi.training.data_loader); gemma.PALIGEMMA_VOCAB_SIZE -> the
fixture tokenizer's 400; pi0.py's hard-coded SigLIP "So400m/14" -> big_vision "mu/14"; model.IMAGE_RESOLUTION
(and preprocess_observation's default) -> 42 x 42 (3 x 3 patches); gemma.get_config gains "dummy_lora" ("dummy"
+ attn LoRA rank 4 / alpha 8, ffn LoRA rank 2 / alpha 2; openpi has no small LoRA variant); PaligemmaTokenizer
reads the fixture's sentencepiece model instead of downloading paligemma_tokenizer.model.

Every number comes from openpi's code: `Pi0Config(pi05=True, dtype="float32", paligemma_variant="dummy",
action_expert_variant="dummy", ...)`, `Pi0.sample_actions` (given noise, 3 steps), `Pi0.compute_loss(train=False)`
(its noise / time draws captured), in float32 and openpi's default bfloat16. The checkpoint is written by
`openpi.training.checkpoints.save_state` (`params/`, trailing `/value` keys) and read back with
`model.restore_params` before anything is computed. LoRA: `CheckpointWeightLoader` loads that params/ into the
"dummy_lora" model (LoRA leaves keep their init, as a fine-tune starts), then the LoRA leaves are randomised and
stored in lora_leaves.npz. pistar: its tokenizer with each advantage value and its pistar=True (weighted) loss
on the same checkpoint and draws (pistar.npz). Fresh openpi weights are degenerate for parity (adaRMS `Dense_0`
and the SigLIP head are zero, LoRA factors 0.01), so every leaf gets noise (std 0.1, seed 1) before saving.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

import upstream_stand_ins  # beside this script

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "models" / "fixtures" / "openpi_pi05"

# Sizes of the tiny model (our side: the same numbers in test_openpi_parity.py).
IMAGE_SIZE = 42
SIGLIP_VARIANT = "mu/14"
ACTION_DIM = 8
ACTION_HORIZON = 5
MAX_TOKEN_LEN = 48
BATCH = 2
NUM_STEPS = 3
LORA_ATTN = (4, 8.0)  # rank, alpha -> scaling 2
LORA_FFN = (2, 2.0)  # openpi applies no scaling to the FFN LoRA

# Tokenizer cases: (prompt, state or None). States hit the bin edges, +-1, values beyond +-1 and negatives.
TOKENIZER_MAX_LEN = 64
PROMPTS = [
    (" pick_up the red\nblock ", [-1.0, -0.5, 0.0, 0.99, 0.9921875, 1.0, -1.5, 1.7]),
    ("Fold the TOWEL, then stack it!", [0.25, -0.125, -0.9999, 0.5]),
    ("Hand over: cup #2 (blue); don't spill.", [-0.0039, 0.0039, -2.0, 3.0, 0.3]),
    ("put_the_cup on_the plate", None),
    ("move " * 30 + "the long arm", [0.1, 0.2, 0.3]),  # over max_len: truncated
]
ADVANTAGES = ["positive", "negative", None]


def install_stand_ins() -> None:
    """Stand-ins for PyTorch-side imports, and for the openpi modules that import PyTorch code."""
    upstream_stand_ins.install()
    for name, attrs in (("openpi.models_pytorch.pi0_pytorch", {}), ("openpi.training.data_loader", {"DataLoader": object})):
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__dict__.update(attrs)
    sys.modules["openpi.models_pytorch"] = types.ModuleType("openpi.models_pytorch")
    sys.modules["openpi.models_pytorch"].pi0_pytorch = sys.modules["openpi.models_pytorch.pi0_pytorch"]


def patch_openpi(vocab_size: int) -> None:
    import openpi.models.gemma as _gemma
    import openpi.models.lora as _lora
    import openpi.models.model as _model
    import openpi.models.siglip as _siglip

    _gemma.PALIGEMMA_VOCAB_SIZE = vocab_size
    orig_siglip = _siglip.Module
    _siglip.Module = lambda num_classes=None, *, variant=None, **kw: orig_siglip(
        num_classes, variant=SIGLIP_VARIANT, **kw
    )
    _model.IMAGE_RESOLUTION = (IMAGE_SIZE, IMAGE_SIZE)
    _model.preprocess_observation = functools.partial(
        _model.preprocess_observation, image_resolution=(IMAGE_SIZE, IMAGE_SIZE)
    )
    orig_get_config = _gemma.get_config

    def get_config(variant):
        if variant == "dummy_lora":
            c = orig_get_config("dummy")
            c.lora_configs = {
                "attn": _lora.LoRAConfig(rank=LORA_ATTN[0], alpha=LORA_ATTN[1]),
                "ffn": _lora.LoRAConfig(rank=LORA_FFN[0], alpha=LORA_FFN[1]),
            }
            return c
        return orig_get_config(variant)

    _gemma.get_config = get_config


def train_tokenizer(out: Path) -> Path:
    """A 400-piece BPE sentencepiece model with Gemma's ids (pad 0, eos 1, bos 2, unk 3) and, like Gemma's /
    PaliGemma's tokenizer, no normalisation (identity, no dummy prefix, whitespace kept), so the file is small.
    Trained on the demo corpus (recap_ray/demo_assets.py, loaded by path: it imports only os/pathlib)."""
    import sentencepiece as spm

    spec = importlib.util.spec_from_file_location("demo_assets", REPO / "recap_ray" / "demo_assets.py")
    demo_assets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_assets)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "corpus.txt").write_text(demo_assets.CORPUS)
        spm.SentencePieceTrainer.train(
            input=str(Path(tmp) / "corpus.txt"), model_prefix=str(Path(tmp) / "tok"), vocab_size=400,
            model_type="bpe", pad_id=0, eos_id=1, bos_id=2, unk_id=3, byte_fallback=True, character_coverage=1.0,
            num_threads=1, minloglevel=2, normalization_rule_name="identity", add_dummy_prefix=False,
            remove_extra_whitespaces=False,
        )  # fmt: skip
        shutil.copy(Path(tmp) / "tok.model", out)
    return out


def openpi_tokenizer(tokenizer_cls, model_path: Path, max_len: int):
    """openpi's / pistar's PaligemmaTokenizer reading our local sentencepiece model instead of downloading."""
    import openpi.shared.download as download

    original = download.maybe_download
    download.maybe_download = lambda *_a, **_k: Path(model_path)
    try:
        return tokenizer_cls(max_len)
    finally:
        download.maybe_download = original


def randomize(model, seed: int, *, lora_only: bool = False):
    """Add N(0, 0.1^2) to every parameter (all leaves become non-degenerate), or to the LoRA leaves only."""
    import jax
    from flax import nnx
    from openpi.shared import nnx_utils

    state = nnx.state(model, nnx_utils.PathRegex(".*lora.*") if lora_only else nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)]
    nnx.update(model, jax.tree.unflatten(treedef, leaves))


def write_params(model, config, out: Path) -> None:
    """The `params/` item exactly as openpi training writes it: TrainState -> checkpoints.save_state."""
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from openpi.shared import nnx_utils
    from openpi.training import checkpoints
    from openpi.training import utils as training_utils

    params = nnx.state(model)
    # scripts/train.py init(): frozen leaves (LoRA freeze filter) are stored in bfloat16.
    params = nnx_utils.state_map(params, config.get_freeze_filter(), lambda p: p.replace(p.value.astype(jnp.bfloat16)))
    tx = optax.sgd(1e-3)
    state = training_utils.TrainState(step=0, params=params, model_def=nnx.graphdef(model), tx=tx,
                                      opt_state=tx.init(params), ema_decay=None, ema_params=None)  # fmt: skip
    loader = types.SimpleNamespace(data_config=lambda: types.SimpleNamespace(norm_stats=None, asset_id=None))
    with tempfile.TemporaryDirectory() as tmp:
        mngr, _ = checkpoints.initialize_checkpoint_dir(Path(tmp) / "run", keep_period=None, overwrite=True,
                                                        resume=False)  # fmt: skip
        checkpoints.save_state(mngr, state, loader, step=0)
        mngr.wait_until_finished()
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(Path(tmp) / "run" / "0" / "params", out)


def make_inputs(tokenizer, rng: np.random.Generator) -> dict[str, np.ndarray]:
    images = rng.integers(0, 256, (3, BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    masks = np.array([[True, True], [True, True], [True, False]])  # sample 1 lacks the right wrist camera
    state = rng.uniform(-1, 1, (BATCH, ACTION_DIM)).astype(np.float32)
    toks, tmasks = zip(*[
        tokenizer.tokenize(p, s)
        for p, s in (("pick up the cup", state[0]), ("Put_the red block\nin the bowl!", state[1, :5]))
    ])  # fmt: skip
    return {"images": images, "image_masks": masks, "state": state, "tokenized_prompt": np.stack(toks).astype(np.int32),
            "tokenized_prompt_mask": np.stack(tmasks).astype(bool),
            "actions": rng.normal(size=(BATCH, ACTION_HORIZON, ACTION_DIM)).astype(np.float32),
            "sample_noise": rng.normal(size=(BATCH, ACTION_HORIZON, ACTION_DIM)).astype(np.float32),
            "loss_rng_seed": np.array(7)}  # fmt: skip


def images_float(images: np.ndarray) -> np.ndarray:
    """uint8 -> [-1, 1] float32 as openpi's Observation.from_dict converts it (the test does the same)."""
    return images.astype(np.float32) / 255.0 * 2.0 - 1.0


def observation(inputs: dict[str, np.ndarray]):
    import jax.numpy as jnp
    from openpi.models import model as _model

    keys = _model.IMAGE_KEYS
    return _model.Observation(
        images={k: jnp.asarray(images_float(inputs["images"][i])) for i, k in enumerate(keys)},
        image_masks={k: jnp.asarray(inputs["image_masks"][i]) for i, k in enumerate(keys)},
        state=jnp.asarray(inputs["state"]),
        tokenized_prompt=jnp.asarray(inputs["tokenized_prompt"]), tokenized_prompt_mask=jnp.asarray(inputs["tokenized_prompt_mask"]),
    )  # fmt: skip


def run_model(model, inputs: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Sample with the given noise and compute the per-element training loss (train=False: no augmentation)."""
    import jax
    import jax.numpy as jnp

    obs = observation(inputs)
    sample_noise = jnp.asarray(inputs["sample_noise"])
    actions = model.sample_actions(jax.random.key(0), obs, num_steps=NUM_STEPS, noise=sample_noise)
    # compute_loss draws noise and time from `rng`; capture the draws it makes (split into 3: preprocess, noise, time).
    drawn = {}
    normal, beta = jax.random.normal, jax.random.beta

    def capture(name, fn):
        def wrapped(*a, **k):
            out = fn(*a, **k)
            drawn.setdefault(name, []).append(out)
            return out

        return wrapped

    jax.random.normal, jax.random.beta = capture("noise", normal), capture("time_beta", beta)
    try:
        rng = jax.random.key(int(inputs["loss_rng_seed"]))
        loss = model.compute_loss(rng, obs, jnp.asarray(inputs["actions"]), train=False)
    finally:
        jax.random.normal, jax.random.beta = normal, beta
    # (linen's bridge also calls initializers on the way; the noise is the one draw of the actions' shape)
    (noise,) = [x for x in drawn["noise"] if x.shape == inputs["actions"].shape]
    (time,) = [x * 0.999 + 0.001 for x in drawn["time_beta"]]
    return {f"{prefix}sample_actions": np.asarray(actions), f"{prefix}loss": np.asarray(loss),
            f"{prefix}loss_noise": np.asarray(noise), f"{prefix}loss_time": np.asarray(time)}  # fmt: skip


def image_tokens(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """SigLIP tokens (cameras, B, patches, width) as float32: `PaliGemma.img` as `embed_prefix` calls it."""
    import jax.numpy as jnp

    obs = observation(inputs)
    return np.stack([np.asarray(model.PaliGemma.img(obs.images[k], train=False)[0].astype(jnp.float32))
                     for k in obs.images])  # fmt: skip


def tokenizer_cases(tokenizer, *, pistar: bool) -> dict[str, np.ndarray]:
    out = {}
    for i, (prompt, state) in enumerate(PROMPTS):
        s = None if state is None else np.asarray(state, np.float32)
        for adv in ADVANTAGES if pistar else [None]:
            if pistar and s is None:
                continue
            kw = {"adv_ind": adv, "adv_ind_dropout": False} if pistar else {}
            tokens, mask = tokenizer.tokenize(prompt, s, **kw)
            name = f"{'pistar' if pistar else 'openpi'}_{i}_{adv or 'absent'}"
            out[f"{name}_tokens"] = np.asarray(tokens, np.int64)
            out[f"{name}_mask"] = np.asarray(mask, bool)
    return out


def pistar_child(pistar_src: Path) -> None:
    """In a separate process (pistar is also the `openpi` package): pistar's tokenizer and pistar-weighted loss."""
    sys.path.insert(0, str(pistar_src / "src"))
    install_stand_ins()
    import jax.numpy as jnp
    from openpi.models import pi0_config
    from openpi.models import tokenizer as _tokenizer

    tok = openpi_tokenizer(_tokenizer.PaligemmaTokenizer, FIXTURE / "tokenizer.model", TOKENIZER_MAX_LEN)
    out = tokenizer_cases(tok, pistar=True)
    patch_openpi(400)
    inputs = dict(np.load(FIXTURE / "inputs.npz"))
    config = pi0_config.Pi0Config(pi05=True, pistar=True, **model_kwargs("dummy"))
    from openpi.models import model as _model

    res = run_model(config.load(_model.restore_params(FIXTURE / "params", restore_type=np.ndarray)), inputs, "pistar_")
    ref = np.load(FIXTURE / "outputs.npz")
    for k in ("loss_noise", "loss_time", "sample_actions"):
        np.testing.assert_array_equal(res[f"pistar_{k}"], ref[k])  # same draws, same weights as openpi's run
    out["pistar_weighted_loss"] = res["pistar_loss"]
    np.savez(FIXTURE / "pistar.npz", **out)
    del jnp


def model_kwargs(variant: str) -> dict:
    return {"dtype": "float32", "paligemma_variant": variant, "action_expert_variant": variant,
            "action_dim": ACTION_DIM, "action_horizon": ACTION_HORIZON, "max_token_len": MAX_TOKEN_LEN}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("openpi_src", type=Path, help="openpi source tree (has src/openpi)")
    parser.add_argument("--pistar", type=Path, help="pistar source tree (tokenizer + weighted loss)")
    parser.add_argument("--pistar-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pistar_child:
        pistar_child(args.openpi_src)
        return
    sys.path.insert(0, str(args.openpi_src / "src"))
    install_stand_ins()
    import flax.traverse_util
    import jax
    import orbax.checkpoint

    FIXTURE.mkdir(parents=True, exist_ok=True)
    sp_model = train_tokenizer(FIXTURE / "tokenizer.model")
    import sentencepiece

    vocab = sentencepiece.SentencePieceProcessor(model_file=str(sp_model)).get_piece_size()
    patch_openpi(vocab)
    from openpi.models import pi0_config
    from openpi.models import tokenizer as _tokenizer

    tok_out = tokenizer_cases(openpi_tokenizer(_tokenizer.PaligemmaTokenizer, sp_model, TOKENIZER_MAX_LEN),
                              pistar=False)  # fmt: skip
    inputs = make_inputs(openpi_tokenizer(_tokenizer.PaligemmaTokenizer, sp_model, MAX_TOKEN_LEN),
                         np.random.default_rng(0))  # fmt: skip
    np.savez(FIXTURE / "inputs.npz", **inputs)

    # Full model: init, randomise, write params/ as training does, restore it as serving does (restore_params).
    from flax import nnx
    from openpi.models import model as _model
    from openpi.training import weight_loaders

    config = pi0_config.Pi0Config(pi05=True, **model_kwargs("dummy"))
    model = config.create(jax.random.key(0))
    randomize(model, seed=1)
    write_params(model, config, FIXTURE / "params")
    model = config.load(_model.restore_params(FIXTURE / "params", restore_type=np.ndarray))
    outputs = run_model(model, inputs, "")
    outputs["image_tokens"] = image_tokens(model, inputs)
    # openpi's default compute dtype (bfloat16 activations, float32 params) from the same checkpoint.
    bf16_config = dataclasses.replace(config, dtype="bfloat16")
    bf16_model = bf16_config.load(_model.restore_params(FIXTURE / "params", restore_type=np.ndarray))
    outputs.update(run_model(bf16_model, inputs, "bf16_"))
    outputs["bf16_image_tokens"] = image_tokens(bf16_model, inputs)
    # LoRA: a fine-tune's start (CheckpointWeightLoader: base params/ into the LoRA model, LoRA leaves keep their
    # init), then the LoRA leaves randomised as if trained; they are stored in lora_leaves.npz (keeps the fixture
    # small: a LoRA run's own params/ would repeat every base weight).
    lora_config = pi0_config.Pi0Config(pi05=True, **model_kwargs("dummy_lora"))
    lora_model = lora_config.create(jax.random.key(0))
    graphdef, state = nnx.split(lora_model)
    state.replace_by_pure_dict(weight_loaders.CheckpointWeightLoader(str(FIXTURE / "params")).load(state.to_pure_dict()))
    lora_model = nnx.merge(graphdef, state)
    randomize(lora_model, seed=2, lora_only=True)
    lora_leaves = flax.traverse_util.flatten_dict(nnx.state(lora_model).to_pure_dict(), sep="/")
    lora_leaves = {k: np.asarray(v) for k, v in lora_leaves.items() if "lora" in k}
    np.savez(FIXTURE / "lora_leaves.npz", **lora_leaves)
    outputs.update(run_model(lora_model, inputs, "lora_"))
    np.savez(FIXTURE / "outputs.npz", **outputs)
    np.savez(FIXTURE / "tokenizer.npz", **tok_out)
    if args.pistar:
        env = {**os.environ, "PYTHONPATH": ""}
        cmd = [sys.executable, __file__, str(args.pistar), "--pistar-child"]
        subprocess.run(cmd, check=True, env=env)

    meta = {
        "openpi_commit": os.environ.get("OPENPI_COMMIT"),  # `git archive` trees carry no commit
        "pistar_commit": os.environ.get("PISTAR_COMMIT") if args.pistar else None,
        "python": sys.version.split()[0], "jax": jax.__version__, "flax": flax.__version__,
        "orbax_checkpoint": orbax.checkpoint.__version__, "numpy": np.__version__,
        "sentencepiece": sentencepiece.__version__, "vocab_size": vocab, "image_size": IMAGE_SIZE,
        "siglip_variant": SIGLIP_VARIANT, "gemma_variant": "dummy", "lora": {"attn": LORA_ATTN, "ffn": LORA_FFN},
        "action_dim": ACTION_DIM, "action_horizon": ACTION_HORIZON, "max_token_len": MAX_TOKEN_LEN,
        "tokenizer_max_len": TOKENIZER_MAX_LEN, "num_steps": NUM_STEPS, "prompts": PROMPTS,
    }  # fmt: skip
    (FIXTURE / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    for k, v in sorted(outputs.items()):
        print(k, v.shape, float(np.abs(v).max()))


if __name__ == "__main__":
    main()
