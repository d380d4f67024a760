"""SigLIP tower: real-size tree against the spec, tiny numbers against plain-jax references."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recap_ray.models import siglip

import spec_tree

def test_so400m_tree_matches_openpi_img_subtree():
    config = siglip.SiglipConfig.so400m(num_classes=2048)
    abstract = nnx.eval_shape(lambda: siglip.Siglip(config, rngs=nnx.Rngs(0)))
    assert spec_tree.tree_shapes(nnx.to_pure_dict(nnx.state(abstract))) == spec_tree.shapes("pi05.tsv", "PaliGemma/img/")


@pytest.fixture(scope="module")
def tiny():
    config = dataclasses.replace(siglip.SiglipConfig.tiny(num_classes=48), dtype="float32")
    model = siglip.Siglip(config, rngs=nnx.Rngs(1))
    # give the zero-initialised head real weights so it is exercised
    model.head.kernel[...] = jax.random.normal(jax.random.key(2), model.head.kernel.shape) * 0.1
    return config, model


def _reference(params: dict, images: np.ndarray, config: siglip.SiglipConfig) -> np.ndarray:
    """Loop-over-layers ViT with a real convolution, written independently of the module."""
    x = jax.lax.conv_general_dilated(
        jnp.asarray(images, jnp.float32), params["embedding"]["kernel"], (14, 14), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    ) + params["embedding"]["bias"]
    x = x.reshape(x.shape[0], -1, config.width) + params["pos_embedding"]

    def ln(v, p):
        mu = v.mean(-1, keepdims=True)
        return (v - mu) / jnp.sqrt(((v - mu) ** 2).mean(-1, keepdims=True) + 1e-6) * p["scale"] + p["bias"]

    blocks = params["Transformer"]["encoderblock"]
    for i in range(config.depth):
        p = jax.tree.map(lambda a: a[i], blocks)
        a = p["MultiHeadDotProductAttention_0"]
        y = ln(x, p["LayerNorm_0"])
        q, k, v = (jnp.einsum("bld,dhe->blhe", y, a[n]["kernel"]) + a[n]["bias"] for n in ("query", "key", "value"))
        w = jax.nn.softmax(jnp.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(config.head_dim), axis=-1)
        o = jnp.einsum("bhqk,bkhe->bqhe", w, v)
        x = x + jnp.einsum("bqhe,hed->bqd", o, a["out"]["kernel"]) + a["out"]["bias"]
        m = p["MlpBlock_0"]
        y = ln(x, p["LayerNorm_1"])
        h = jax.nn.gelu(y @ m["Dense_0"]["kernel"] + m["Dense_0"]["bias"], approximate=True)
        x = x + h @ m["Dense_1"]["kernel"] + m["Dense_1"]["bias"]
    x = ln(x, params["Transformer"]["encoder_norm"])
    return np.asarray(x @ params["head"]["kernel"] + params["head"]["bias"])


def test_tiny_matches_reference(tiny):
    config, model = tiny
    images = np.random.default_rng(0).uniform(-1, 1, (2, 28, 28, 3)).astype(np.float32)
    got = np.asarray(model(jnp.asarray(images)))
    assert got.shape == (2, config.num_patches, 48)
    want = _reference(nnx.to_pure_dict(nnx.state(model)), images, config)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_bf16_compute_and_shape_error():
    config = siglip.SiglipConfig.tiny()
    model = siglip.Siglip(config, rngs=nnx.Rngs(0))
    out = model(jnp.zeros((1, 28, 28, 3)))
    assert out.dtype == jnp.bfloat16 and out.shape == (1, 4, 32)
    assert nnx.to_pure_dict(nnx.state(model))["pos_embedding"].dtype == jnp.float32
    assert "head" not in nnx.to_pure_dict(nnx.state(model))
    with pytest.raises(ValueError, match="resize"):
        model(jnp.zeros((1, 56, 56, 3)))
