"""Value model: real-size tree against the spec, fusion math against numpy, V range, freeze modes."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jobs import params as params_job
from recap_ray.configs import registry
from recap_ray.models import c51, value, value_preprocess, value_tokenizer, weights

import spec_tree

def test_real_size_tree_matches_spec_tsv_via_jobs_params():
    want = [f"{path} [{','.join(map(str, shape))}] {dtype}" for path, (shape, dtype) in spec_tree.rows("value_model.tsv").items()]
    got = params_job.main(params_job.Args(config="value"))
    assert got == sorted(want)
    assert len(got) == 239
    total = sum(math.prod(v.shape) for v in weights.flatten(registry.get("value").abstract_params()).values())
    assert total == 683_191_609


def test_registry_has_value_configs_with_freeze_modes():
    real, tiny = registry.get("value"), registry.get("value_tiny")
    assert real.freeze_mode == tiny.freeze_mode == "all_backbones"
    assert (real.max_token_len, real.num_atoms, real.image_size) == (48, 201, 224)
    with pytest.raises(ValueError, match="freeze_mode"):
        dataclasses.replace(tiny, freeze_mode="llm_only")
    with pytest.raises(ValueError, match="sorted"):
        dataclasses.replace(tiny, cameras=("wrist_0_rgb", "base_0_rgb"))


# ----------------------------------------------------------------------------- tiny model


def _random_state(config, seed: int) -> tuple[nnx.GraphDef, nnx.State]:
    """O(1) random weights everywhere (nnx/gemma inits leave many near-zero or exactly zero),
    made under jit from the abstract model: nothing is initialised eagerly."""
    graphdef, abstract = nnx.split(config.abstract_model())
    leaves, treedef = jax.tree.flatten(abstract)

    @jax.jit
    def make(key):
        keys = jax.random.split(key, len(leaves))
        return [jax.random.normal(k, x.shape, x.dtype) * (0.3 if x.ndim > 1 else 0.2) for k, x in zip(keys, leaves)]

    return graphdef, jax.tree.unflatten(treedef, make(jax.random.key(seed)))


@pytest.fixture(scope="module")
def tiny():
    config = registry.get("value_tiny")
    config = dataclasses.replace(config, siglip=dataclasses.replace(config.siglip, dtype="float32"))
    graphdef, state = _random_state(config, 3)
    model = nnx.merge(graphdef, state)
    logits_fn = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))
    return config, model, state, logits_fn


def _batch(config, seed: int = 0, batch: int = 3):
    rng = np.random.default_rng(seed)
    s = config.image_size
    images = rng.uniform(-1, 1, (batch, len(config.cameras), s, s, 3)).astype(np.float32)
    masks = np.ones((batch, len(config.cameras)), bool)
    masks[1, 1] = False  # a missing wrist camera
    tokens = rng.integers(4, 400, (batch, config.max_token_len)).astype(np.int32)
    tokens[:, 0] = 2
    tokens[0, 5:] = 0
    return images, masks, tokens, tokens != 0


def _layer_norm(x, scale, bias):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-6) * scale + bias


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def test_fusion_pool_and_head_match_numpy(tiny):
    """Cross-attention, sequence layout, masks, pooling and head re-derived from the params."""
    config, model, state, logits_fn = tiny
    images, masks, tokens, tmask = _batch(config)
    got = np.asarray(logits_fn(state, images, masks, tokens, tmask))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(state))
    b, cams = masks.shape
    img = np.asarray(jax.jit(model.img)(jnp.asarray(images.reshape(b * cams, *images.shape[2:]))), np.float64)
    img = img @ p["img_projection"]["kernel"] + p["img_projection"]["bias"]
    img = img.reshape(b, -1, img.shape[-1])  # (B, cams * tokens, D): cameras in order
    text = p["llm"]["embedder"]["input_embedding"][tokens] * math.sqrt(config.llm.width)
    ca = p["cross_attention"]
    qn = _layer_norm(text, p["cross_attn_norm"]["scale"], p["cross_attn_norm"]["bias"])
    q = np.einsum("bld,dhk->blhk", qn, ca["query"]["kernel"]) + ca["query"]["bias"]
    k = np.einsum("bsd,dhk->bshk", img, ca["key"]["kernel"]) + ca["key"]["bias"]
    v = np.einsum("bsd,dhk->bshk", img, ca["value"]["kernel"]) + ca["value"]["bias"]
    logits = np.einsum("blhk,bshk->bhls", q, k) / math.sqrt(q.shape[-1])  # no mask at all
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    att = np.einsum("bhls,bshk->blhk", w, v)
    text = text + np.einsum("blhk,hkd->bld", att, ca["out"]["kernel"]) + ca["out"]["bias"]
    seq = np.concatenate([img, text], axis=1)
    valid = np.concatenate([np.repeat(masks, img.shape[1] // cams, axis=1), tmask], axis=1)
    hidden = np.asarray(jax.jit(model.llm)(jnp.asarray(seq, jnp.float32), jnp.asarray(valid)), np.float64)
    pooled = (hidden * valid[..., None]).sum(1) / valid.sum(1, keepdims=True)
    vh = p["value_head"]
    h = _layer_norm(pooled, vh["layer_norm"]["scale"], vh["layer_norm"]["bias"])
    h = _gelu_tanh(h @ vh["linear1"]["kernel"] + vh["linear1"]["bias"])
    want = h @ vh["linear2"]["kernel"] + vh["linear2"]["bias"]
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


def test_value_in_range_and_equal_to_expectation(tiny):
    config, model, state, logits_fn = tiny
    images, masks, tokens, tmask = _batch(config, seed=1)
    logits = logits_fn(state, images, masks, tokens, tmask)
    v = np.asarray(jax.jit(model.value)(images, masks, tokens, tmask))
    probs = np.asarray(jax.nn.softmax(logits.astype(jnp.float32)), np.float64)
    np.testing.assert_allclose(v, probs @ np.linspace(-1, 0, 201), atol=1e-5)
    assert v.shape == (3,) and np.all(v >= -1) and np.all(v <= 0)
    # a head pushed hard to the top atom still reads out inside the support, near 0
    v2 = np.asarray(c51.expected_value(logits + jnp.linspace(-500.0, 500.0, 201)))
    assert np.all(v2 <= 0.0) and np.all(v2 > -1e-4)


def test_text_only_and_images_only_paths(tiny):
    config, model, state, logits_fn = tiny
    images, masks, tokens, tmask = _batch(config, batch=2)
    assert logits_fn(state, None, None, tokens, tmask).shape == (2, 201)
    assert logits_fn(state, images, masks, None, None).shape == (2, 201)
    with pytest.raises(ValueError, match="both images and tokens are None"):
        model(None, None, None, None)


@pytest.mark.parametrize(
    ("mode", "frozen_prefixes"),
    [("all_backbones", ("img/", "llm/")), ("siglip_only", ("img/",)), ("none", ())],
)
def test_freeze_modes_leave_frozen_leaves_bit_identical(tiny, mode, frozen_prefixes):
    config, model, _, _ = tiny
    config = dataclasses.replace(config, freeze_mode=mode)
    graphdef, trainable, rest = nnx.split(model, config.trainable_filter(), ...)
    tx = optax.adamw(1e-2, b1=0.9, b2=0.95, weight_decay=1e-10)
    batch = tuple(jnp.asarray(a) for a in _batch(config, seed=2))
    targets = jnp.array([-0.9, -0.5, 0.0])

    @jax.jit
    def step(trainable, rest, opt_state):
        loss_fn = lambda t: nnx.merge(graphdef, t, rest).loss(*batch, targets)  # noqa: E731
        grads = jax.grad(loss_fn)(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates)

    new = step(trainable, rest, tx.init(trainable))
    before = weights.flatten(nnx.to_pure_dict(nnx.state(model)))
    after = weights.flatten(nnx.to_pure_dict(nnx.state(nnx.merge(graphdef, new, rest))))
    changed = {k for k in before if not np.array_equal(np.asarray(before[k]), np.asarray(after[k]))}
    frozen = {k for k in before if k.startswith(frozen_prefixes)} if frozen_prefixes else set()
    assert not (changed & frozen), sorted(changed & frozen)[:5]
    trainable_paths = set(weights.flatten(nnx.to_pure_dict(trainable)))
    assert trainable_paths == set(before) - frozen
    # every trainable group moved (the token table is trainable but stop_gradient'ed)
    for prefix in ("value_head/", "cross_attention/", "img_projection/", "llm/layer_0/", "img/Transformer/"):
        if not prefix.startswith(frozen_prefixes or ("\0",)):
            assert any(k.startswith(prefix) for k in changed), prefix


def test_ema_update_is_decay_weighted_average():
    ema = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array(4.0)}}
    new = {"a": jnp.array([3.0, 2.0]), "b": {"c": jnp.array(0.0)}}
    out = value.ema_update(ema, new, 0.99)
    np.testing.assert_allclose(np.asarray(out["a"]), [1.02, 2.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["b"]["c"]), 3.96, rtol=1e-6)


# ----------------------------------------------------------------------------- inputs


def test_value_tokenizer_prompt_layout(sentencepiece_model):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
    tok = value_tokenizer.ValueTokenizer(sentencepiece_model, max_len=24)
    tokens, mask = tok(["fold the towel  \n", "pick up the red block and hand it over " * 5])
    want = [2, *sp.encode("fold the towel\nValue:")]
    assert tokens.dtype == np.int32 and tokens.shape == (2, 24)
    assert tokens[0, : len(want)].tolist() == want and not tokens[0, len(want):].any()
    np.testing.assert_array_equal(mask, tokens != 0)
    assert mask[1].all()  # truncated to 24, the "Value:" suffix cut
    long = [2, *sp.encode(("pick up the red block and hand it over " * 5).rstrip() + "\nValue:")]
    assert tokens[1].tolist() == long[:24]


def test_camera_batch_resizes_pads_and_masks_missing():
    frames = {"base_0_rgb": np.full((2, 10, 20, 3), 255, np.uint8)}
    images, masks = value_preprocess.camera_batch_uint8(frames, ("base_0_rgb", "wrist_0_rgb"), 28)
    assert images.shape == (2, 2, 28, 28, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(masks, [[True, False], [True, False]])
    # 10x20 -> 14x28, padded 7 rows above and below with black
    assert np.all(images[:, 0, 7:21] == 255) and np.all(images[:, 0, :7] == 0) and np.all(images[:, 0, 21:] == 0)
    assert np.all(images[:, 1] == 0)
    with pytest.raises(KeyError, match="left_wrist"):
        value_preprocess.camera_batch_uint8({"left_wrist": frames["base_0_rgb"]}, ("base_0_rgb",), 28)
