"""Value-model weights: a tiny vlm bundle in both layouts, pistar value checkpoints, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from recap_ray.configs import registry
from recap_ray.models import value_weights as vw
from recap_ray.models import weights


def _nest(flat: dict) -> dict:
    tree: dict = {}
    for path, leaf in flat.items():
        *parents, last = path.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = leaf
    return tree


@pytest.fixture(scope="module")
def tiny():
    """value_tiny with O(1) random float32 params (numpy pure dict) and a jitted logits function."""
    config = registry.get("value_tiny")
    graphdef, abstract = nnx.split(config.abstract_model())
    flat_abstract = weights.flatten(jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), nnx.to_pure_dict(abstract)))
    rng = np.random.default_rng(0)
    params = _nest({k: (rng.normal(size=v.shape) * 0.3).astype(np.float32) for k, v in flat_abstract.items()})
    ema = jax.tree.map(lambda a: (a * 0.5).astype(np.float32), params)

    def run(p):
        state = nnx.state(nnx.merge(graphdef, abstract))
        nnx.replace_by_pure_dict(state, jax.tree.map(np.asarray, p))
        return forward(state)

    forward = jax.jit(lambda s: nnx.merge(graphdef, s)(*_inputs(config)))
    return config, params, ema, run


def _inputs(config):
    rng = np.random.default_rng(1)
    s = config.image_size
    images = rng.uniform(-1, 1, (2, 2, s, s, 3)).astype(np.float32)
    tokens = np.array([[2, 9, 17, 30, 0, 0, 0, 0], [2, 40, 41, 42, 43, 44, 45, 46]], np.int32)
    return images, np.array([[True, True], [True, False]]), tokens, tokens != 0


def _logits(run, model):
    """The loaded model's outputs, through the same compiled forward as the reference."""
    return np.asarray(run(vw.params_of(model)))


def _write_siglip_npz(path: Path, img: dict, depth: int) -> None:
    """big_vision style: `params/img/...`, unscanned `encoderblock_N`, plus text-tower extras."""
    flat = {}
    for key, arr in weights.flatten(img).items():
        if key.startswith("Transformer/encoderblock/"):
            leaf = key[len("Transformer/encoderblock/"):]
            for i in range(depth):
                flat[f"params/img/Transformer/encoderblock_{i}/{leaf}"] = arr[i]
        else:
            flat[f"params/img/{key}"] = arr
    flat["params/img/MAPHead_0/probe"] = np.zeros((1, 1, 4), np.float32)
    flat["params/txt/Embed_0/embedding"] = np.zeros((3, 4), np.float32)
    flat["params/t"] = np.zeros((1,), np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **flat)


@pytest.fixture
def value_tree_bundle(tmp_path, tiny, sentencepiece_model):
    """Bundle whose gemma-3-270m/step_00020000 is a whole value-model tree (Destiny000621/RECAP)."""
    config, params, ema, _ = tiny
    root = tmp_path / "vlm_ckpt"
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save((root / "gemma-3-270m" / "step_00020000").resolve(), {"params": params, "ema_params": ema, "step": 20000})
    _write_siglip_npz(root / vw.SIGLIP_NPZ, params["img"], config.siglip.depth)
    shutil.copy(sentencepiece_model, root / "tokenizer.model")
    return root


@pytest.fixture
def raw_gemma_bundle(tmp_path, tiny, sentencepiece_model):
    """Bundle whose gemma-3-270m/ is a raw Gemma3 orbax checkpoint in gemma's flat naming."""
    config, params, _, _ = tiny
    root = tmp_path / "vlm_ckpt_raw"
    raw: dict = {}
    for key, arr in weights.flatten(params["llm"]).items():
        module, leaf = key.rsplit("/", 1)
        if module.endswith("/mlp"):  # gemma keeps mlp weights as {"w": ...}
            module, leaf = key, "w"
        raw.setdefault(f"transformer/{module}", {})[leaf] = arr.astype(jax.numpy.bfloat16)
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save((root / "gemma-3-270m" / "step_00020000").resolve(), raw)
    _write_siglip_npz(root / vw.SIGLIP_NPZ, params["img"], config.siglip.depth)
    shutil.copy(sentencepiece_model, root / "tokenizer.model")
    return root


def test_value_tree_bundle_loads_and_gives_identical_outputs(value_tree_bundle, tiny):
    config, params, _, run = tiny
    bundle = vw.inspect_bundle(value_tree_bundle)
    assert bundle.layout == vw.LAYOUT_VALUE_TREE
    assert bundle.gemma_checkpoint.name == "step_00020000"
    model = vw.load_model(config, bundle_dir=value_tree_bundle)
    loaded = weights.flatten(vw.params_of(model))
    want = weights.flatten(params)
    assert loaded.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(loaded[key], want[key], err_msg=key)
    np.testing.assert_array_equal(_logits(run, model), np.asarray(run(params)))


def test_value_tree_bundle_ema_choice(value_tree_bundle, tiny):
    config, _, ema, _ = tiny
    got = weights.flatten(vw.load_bundle(config, value_tree_bundle, use_ema=True))
    for key, arr in weights.flatten(ema).items():
        np.testing.assert_array_equal(got[key], arr, err_msg=key)


def test_raw_gemma_bundle_loads_llm_and_siglip_keeps_fresh_heads(raw_gemma_bundle, tiny, monkeypatch):
    config, params, _, run = tiny
    monkeypatch.setenv(vw.BUNDLE_ENV_VAR, str(raw_gemma_bundle))  # no --vlm-bundle: env fallback
    assert vw.inspect_bundle(None).layout == vw.LAYOUT_RAW_GEMMA
    model = vw.load_model(config)
    got = weights.flatten(vw.params_of(model))
    want = weights.flatten(params)
    for key in want:
        if key.startswith("llm/"):  # stored as bfloat16, cast back to float32
            np.testing.assert_array_equal(got[key], want[key].astype(jax.numpy.bfloat16).astype(np.float32), err_msg=key)
        elif key.startswith("img/"):
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    fresh = weights.flatten(jax.jit(lambda: nnx.to_pure_dict(nnx.state(config.create(0), nnx.Param)))())
    for key in fresh:
        if key.split("/")[0] in vw.HEAD_MODULES:
            np.testing.assert_array_equal(got[key], fresh[key], err_msg=key)
    expected = dict(got)  # same numbers through the reference forward
    np.testing.assert_array_equal(_logits(run, model), np.asarray(run(_nest(expected))))


def test_value_checkpoint_round_trip_in_pistar_layout(tmp_path, tiny):
    config, params, ema, run = tiny
    path = vw.save_checkpoint(tmp_path / "ckpts", 7, params, ema)
    vw.save_checkpoint(tmp_path / "ckpts", 12, ema, params)
    assert path.name == "step_00000007"
    assert {"_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt"} <= {p.name for p in path.iterdir()}
    stored = ocp.PyTreeCheckpointer().restore(path)
    assert set(stored) == {"params", "ema_params", "step"} and int(stored["step"]) == 7
    got, step = vw.load_checkpoint(path, use_ema=False, config=config)
    assert step == 7
    np.testing.assert_array_equal(np.asarray(run(got)), np.asarray(run(params)))
    got, _ = vw.load_checkpoint(path, use_ema=True)
    for key, arr in weights.flatten(ema).items():
        np.testing.assert_array_equal(weights.flatten(got)[key], arr, err_msg=key)
    # a parent directory resolves to its last step_*; that one holds params/ema swapped
    got, step = vw.load_checkpoint(tmp_path / "ckpts", use_ema=True)
    assert step == 12
    np.testing.assert_array_equal(weights.flatten(got)["value_head/linear2/bias"], weights.flatten(params)["value_head/linear2/bias"])
    model = vw.load_model(config, checkpoint=path, use_ema=False)
    np.testing.assert_array_equal(_logits(run, model), np.asarray(run(params)))


def test_missing_files_are_named(value_tree_bundle, raw_gemma_bundle, tmp_path, monkeypatch):
    (value_tree_bundle / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        vw.inspect_bundle(value_tree_bundle)
    (raw_gemma_bundle / vw.SIGLIP_NPZ).unlink()
    with pytest.raises(FileNotFoundError, match="siglip2_so400m14_224.npz"):
        vw.inspect_bundle(raw_gemma_bundle)
    monkeypatch.delenv(vw.BUNDLE_ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match=vw.BUNDLE_ENV_VAR):
        vw.inspect_bundle(None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="step_"):
        vw.find_orbax_dir(tmp_path / "empty")


def test_mismatched_keys_are_named(tmp_path, tiny):
    config, params, _, _ = tiny
    flat = weights.flatten(params)
    del flat["llm/layer_1/mlp/linear"]
    vw.save_checkpoint(tmp_path / "a", 1, _nest(flat))
    with pytest.raises(weights.CheckpointMismatch, match="llm/layer_1/mlp/linear"):
        vw.load_checkpoint(tmp_path / "a", config=config)
    flat = weights.flatten(params)
    flat["img_projection/kernel"] = np.zeros((3, 3), np.float32)
    vw.save_checkpoint(tmp_path / "b", 1, _nest(flat))
    with pytest.raises(weights.CheckpointMismatch, match="img_projection/kernel"):
        vw.load_checkpoint(tmp_path / "b", config=config)
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save((tmp_path / "c").resolve(), {"weights": {"x": np.zeros(2, np.float32)}})
    with pytest.raises(KeyError, match="params"):
        vw.load_checkpoint(tmp_path / "c")


def test_layout_detection_rejects_unknown_trees(tmp_path):
    with pytest.raises(ValueError, match="unrecognised checkpoint"):
        vw.detect_layout({"foo": {"bar": 1}}, tmp_path)
    assert vw.detect_layout(
        {"transformer/embedder": {"input_embedding": 0}, "transformer/layer_0/attn/q_einsum": {"w": 0}}, tmp_path
    ) == "raw_gemma"
    assert vw.detect_layout({"embedder": {"input_embedding": 0}, "layer_0": {"attn": {"w": 0}}}, tmp_path) == "raw_gemma"
    assert vw.detect_layout({"params": {"llm": {"x": 0}}, "step": 0}, tmp_path) == "value_tree"


def test_estimator_from_checkpoint_matches_model_on_raw_frames(tmp_path, tiny, sentencepiece_model):
    from recap_ray.models import c51, value_infer, value_preprocess, value_tokenizer

    config, params, ema, run = tiny
    vw.save_checkpoint(tmp_path / "ckpts", 3, params, ema)
    estimator = value_infer.ValueEstimator.from_checkpoint(
        config, tmp_path / "ckpts", tokenizer_path=sentencepiece_model, batch_size=4
    )
    rng = np.random.default_rng(5)
    frames = {"base_0_rgb": rng.integers(0, 256, (3, 30, 40, 3), dtype=np.uint8), "wrist_0_rgb": None}
    prompts = ["fold the towel", "pour the water", "open the drawer"]
    got = estimator(frames, prompts)
    assert got.shape == (3,) and got.dtype == np.float32 and np.all((got >= -1) & (got <= 0))
    images, masks = value_preprocess.camera_batch_uint8(frames, config.cameras, config.image_size)  # the model maps uint8
    tokens, tmask = value_tokenizer.ValueTokenizer(sentencepiece_model, config.max_token_len)(prompts)
    model = vw.model_from_params(config, ema)  # EMA weights by default
    want = np.asarray(c51.expected_value(jax.jit(lambda m: m(images, masks, tokens, tmask))(model)))
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="2 prompts for 3 frames"):
        estimator(frames, prompts[:2])
    half = value_infer.ValueEstimator(config, model, estimator.tokenizer, dtype="bfloat16")
    assert half.config.llm.dtype == "bfloat16"
    np.testing.assert_allclose(half(frames, prompts), want, atol=0.05)
