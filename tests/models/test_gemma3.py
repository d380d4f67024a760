"""Gemma3 decoder: real-size tree against the spec, tiny numbers against a plain numpy loop."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recap_ray.models import gemma3

import spec_tree

def test_gemma3_270m_tree_matches_pistar_llm_subtree():
    abstract = nnx.eval_shape(lambda: gemma3.Gemma3(gemma3.Gemma3Config.variant("gemma3_270m"), nnx.Rngs(0)))
    assert spec_tree.tree_shapes(nnx.to_pure_dict(nnx.state(abstract))) == spec_tree.shapes("value_model.tsv", "llm/")


def test_attention_pattern_global_every_sixth_layer():
    config = gemma3.Gemma3Config()
    assert [i for i in range(config.depth) if config.is_global(i)] == [5, 11, 17]


# ----------------------------------------------------------------------------- numpy reference


def _rms(x, scale):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6) * (1 + scale)


def _rope(x, pos, base):
    # x (L, H): pairs (j, j + H/2), angle = pos / base^(2j/H)
    h = x.shape[-1]
    out = np.empty_like(x)
    for j in range(h // 2):
        ang = pos / base ** (2 * j / h)
        a, b = x[:, j], x[:, j + h // 2]
        out[:, j] = a * np.cos(ang) - b * np.sin(ang)
        out[:, j + h // 2] = b * np.cos(ang) + a * np.sin(ang)
    return out


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _reference(params, config, x, valid):
    """One sequence (L, D) through the decoder, written as explicit per-head loops in float64."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    length = x.shape[0]
    pos = np.arange(length, dtype=np.float64)
    for i in range(config.depth):
        lp = p[f"layer_{i}"]
        glob = config.is_global(i)
        base = config.global_rope_base if glob else config.local_rope_base
        h = _rms(x, lp["pre_attention_norm"]["scale"])
        heads = []
        for n in range(config.num_heads):
            kv = n * config.num_kv_heads // config.num_heads
            q = h @ lp["attn"]["q_einsum"]["w"][n]
            k = h @ lp["attn"]["kv_einsum"]["w"][0, kv]
            v = h @ lp["attn"]["kv_einsum"]["w"][1, kv]
            q = _rope(_rms(q, lp["attn"]["_query_norm"]["scale"]), pos, base) / math.sqrt(config.head_dim)
            k = _rope(_rms(k, lp["attn"]["_key_norm"]["scale"]), pos, base)
            out = np.zeros((length, config.head_dim))
            for t in range(length):
                allowed = [
                    s for s in range(length)
                    if valid[t] and valid[s] and (glob or abs(t - s) < config.sliding_window)
                ]
                if not allowed:  # fully masked query: uniform over all keys (as the masked softmax)
                    allowed = list(range(length))
                logits = np.array([q[t] @ k[s] for s in allowed])
                w = np.exp(logits - logits.max())
                out[t] = (w / w.sum()) @ v[allowed]
            heads.append(out @ lp["attn"]["attn_vec_einsum"]["w"][n])
        x = x + _rms(sum(heads), lp["post_attention_norm"]["scale"])
        h = _rms(x, lp["pre_ffw_norm"]["scale"])
        gate = h @ lp["mlp"]["gating_einsum"][0].T
        up = h @ lp["mlp"]["gating_einsum"][1].T
        x = x + _rms((_gelu_tanh(gate) * up) @ lp["mlp"]["linear"], lp["post_ffw_norm"]["scale"])
    return _rms(x, p["final_norm"]["scale"])


@pytest.fixture(scope="module")
def tiny():
    config = gemma3.Gemma3Config.variant("tiny")
    model = gemma3.Gemma3(config, nnx.Rngs(0))
    # replace the small default init with O(1) weights so every term matters
    graphdef, state = nnx.split(model)
    keys = iter(jax.random.split(jax.random.key(1), 64))
    state = jax.tree.map(lambda a: jax.random.normal(next(keys), a.shape) * (0.3 if a.ndim > 1 else 0.5), state)
    model = nnx.merge(graphdef, state)
    params = nnx.to_pure_dict(nnx.state(model))
    forward = jax.jit(lambda e, m: model(e, m))
    return config, model, params, forward


def test_tiny_matches_numpy_reference(tiny):
    config, _, params, forward = tiny
    rng = np.random.default_rng(0)
    length = 9  # > 2 x sliding_window so the local layer really is local
    x = rng.normal(size=(2, length, config.width)).astype(np.float32)
    valid = np.ones((2, length), bool)
    valid[1, 6:] = False  # padding at the end of row 1
    valid[1, 2] = False  # and a hole in the middle
    got = np.asarray(forward(jnp.asarray(x), jnp.asarray(valid)))
    for b in range(2):
        want = _reference(params, config, x[b].astype(np.float64), valid[b])
        np.testing.assert_allclose(got[b][valid[b]], want[valid[b]], rtol=2e-4, atol=2e-4)


def test_embed_scales_table_rows_by_sqrt_width(tiny):
    config, model, params, _ = tiny
    tokens = jnp.array([[2, 5, 0]])
    want = np.asarray(params["embedder"]["input_embedding"])[[2, 5, 0]] * math.sqrt(config.width)
    np.testing.assert_allclose(np.asarray(model.embed(tokens))[0], want, rtol=1e-6)


def test_masked_tokens_do_not_reach_valid_ones(tiny):
    config, _, _, forward = tiny
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 7, config.width)).astype(np.float32)
    valid = np.array([[True] * 5 + [False] * 2])
    y = x.copy()
    y[0, 5:] += 10.0
    a = np.asarray(forward(jnp.asarray(x), jnp.asarray(valid)))
    b = np.asarray(forward(jnp.asarray(y), jnp.asarray(valid)))
    np.testing.assert_array_equal(a[0, :5], b[0, :5])
