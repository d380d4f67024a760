"""SigLIP ViT image tower (big_vision's ViT as openpi ports it), in Flax NNX.

Parameter paths match openpi's `PaliGemma/img/...` subtree: `embedding/{kernel,bias}`,
`pos_embedding`, `Transformer/encoderblock/...` (blocks scanned: leading depth axis),
`Transformer/encoder_norm`, and an optional linear `head`. Pooling is always "none": the tower
returns one token per patch. Patch embedding and position embedding run in float32, the rest in
`config.dtype`; parameters are created in `config.param_dtype`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recap_ray.models import stack

_LN_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    """Sizes of a SigLIP ViT with pool_type "none" (big_vision variant strings like "So400m/14")."""

    width: int  # token width
    depth: int  # number of encoder blocks (scanned)
    mlp_dim: int  # hidden width of each block's MLP
    num_heads: int  # attention heads (head_dim = width // num_heads)
    patch_size: int = 14  # square patch side, also the conv stride
    image_size: int = 224  # square input side in pixels
    num_classes: int | None = None  # output width of the linear `head`; None: no head
    dtype: str = "bfloat16"  # compute dtype after the patch/pos embedding
    param_dtype: str = "float32"  # dtype parameters are created in
    remat: str = "nothing_saveable"  # what each block keeps for the backward pass (stack.REMAT_POLICIES)

    def __post_init__(self) -> None:
        stack.check_remat(self.remat)

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_variant(cls, variant: str, num_classes: int | None = None, **kw: object) -> SiglipConfig:
        """A big_vision variant string ("So400m/14", "mu/14", ...; see BIG_VISION_SIZES)."""
        return cls(**decode_variant(variant), num_classes=num_classes, **kw)

    @classmethod
    def so400m(cls, num_classes: int | None = None, **kw: object) -> SiglipConfig:
        """So400m/14 at 224px: width 1152, depth 27, mlp 4304, 16 heads (256 tokens)."""
        return cls.from_variant("So400m/14", num_classes, **kw)

    @classmethod
    def tiny(cls, num_classes: int | None = None, **kw: object) -> SiglipConfig:
        """Same structure, test size: width 32, 2 blocks, 28px images of 14px patches (4 tokens)."""
        kw = {"image_size": 28, **kw}
        return cls(width=32, depth=2, mlp_dim=64, num_heads=2, num_classes=num_classes, **kw)

    @classmethod
    def small(cls, num_classes: int | None = None, **kw: object) -> SiglipConfig:
        """CPU-trainable size for the simulated task: width 64, 3 blocks, 56px images (16 tokens)."""
        kw = {"image_size": 56, **kw}
        return cls(width=64, depth=3, mlp_dim=256, num_heads=4, num_classes=num_classes, **kw)


# big_vision ViT sizes by name (openpi siglip.decode_variant; Table 2 of arXiv:2106.04560):
# (width, depth, mlp_dim, num_heads). A variant string is "<name>/<patch>", e.g. "So400m/14" or "mu/14".
BIG_VISION_SIZES: dict[str, tuple[int, int, int, int]] = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "g-opt": (1536, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
    "G-opt": (1536, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
}


def decode_variant(variant: str) -> dict[str, int]:
    """big_vision variant string ("So400m/14", "mu/14", "B") -> width, depth, mlp_dim, num_heads[, patch_size]."""
    name, _, patch = variant.partition("/")
    if name not in BIG_VISION_SIZES:
        raise ValueError(f"unknown big_vision ViT variant {variant!r}; known sizes: {sorted(BIG_VISION_SIZES)}")
    width, depth, mlp_dim, num_heads = BIG_VISION_SIZES[name]
    out = {"width": width, "depth": depth, "mlp_dim": mlp_dim, "num_heads": num_heads}
    return {**out, "patch_size": int(patch)} if patch else out


def _param(rngs: nnx.Rngs, init: jax.nn.initializers.Initializer, shape: tuple[int, ...], dtype: str) -> nnx.Param:
    return nnx.Param(init(rngs.params(), shape, jnp.dtype(dtype)))


class Dense(nnx.Module):
    """Linear map contracting the trailing `in_shape` axes into `out_shape` (linen DenseGeneral)."""

    def __init__(
        self,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        *,
        param_dtype: str,
        rngs: nnx.Rngs,
        kernel_init: jax.nn.initializers.Initializer = jax.nn.initializers.xavier_uniform(),
        bias_init: jax.nn.initializers.Initializer = jax.nn.initializers.zeros,
    ):
        flat = (math.prod(in_shape), math.prod(out_shape))
        kernel = kernel_init(rngs.params(), flat, jnp.dtype(param_dtype))
        self.kernel = nnx.Param(kernel.reshape(in_shape + out_shape))
        self.bias = _param(rngs, bias_init, out_shape, param_dtype)
        self.n_in = len(in_shape)

    def __call__(self, x: jax.Array, dtype: jnp.dtype) -> jax.Array:
        y = jnp.tensordot(x.astype(dtype), self.kernel[...].astype(dtype), axes=self.n_in)
        return y + self.bias[...].astype(dtype)


class LayerNorm(nnx.Module):
    """LayerNorm (eps 1e-6) with statistics in float32, output cast to `dtype`."""

    def __init__(self, width: int, *, param_dtype: str, rngs: nnx.Rngs):
        self.scale = _param(rngs, jax.nn.initializers.ones, (width,), param_dtype)
        self.bias = _param(rngs, jax.nn.initializers.zeros, (width,), param_dtype)

    def __call__(self, x: jax.Array, dtype: jnp.dtype) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + _LN_EPS)
        return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(dtype)


class MultiHeadDotProductAttention(nnx.Module):
    """Self-attention with biased query/key/value/out projections (linen MHDPA layout)."""

    def __init__(self, config: SiglipConfig, *, rngs: nnx.Rngs):
        heads = (config.num_heads, config.head_dim)
        kw = {"param_dtype": config.param_dtype, "rngs": rngs}
        self.query = Dense((config.width,), heads, **kw)
        self.key = Dense((config.width,), heads, **kw)
        self.value = Dense((config.width,), heads, **kw)
        self.out = Dense(heads, (config.width,), **kw)

    def __call__(self, x: jax.Array, dtype: jnp.dtype) -> jax.Array:
        q, k, v = self.query(x, dtype), self.key(x, dtype), self.value(x, dtype)
        q = q / jnp.sqrt(q.shape[-1]).astype(dtype)
        # Logits and softmax in `dtype`, as linen's dot_product_attention in openpi's tower (bfloat16 there:
        # float32 logits here put bf16 image tokens ~1e-2 off openpi's; tests/models/test_openpi_parity.py).
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
        probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
        return self.out(jnp.einsum("bhqk,bkhd->bqhd", probs, v), dtype)


class MlpBlock(nnx.Module):
    """Dense -> gelu (tanh approximation) -> Dense."""

    def __init__(self, config: SiglipConfig, *, rngs: nnx.Rngs):
        kw = {"param_dtype": config.param_dtype, "rngs": rngs, "bias_init": jax.nn.initializers.normal(1e-6)}
        self.Dense_0 = Dense((config.width,), (config.mlp_dim,), **kw)
        self.Dense_1 = Dense((config.mlp_dim,), (config.width,), **kw)

    def __call__(self, x: jax.Array, dtype: jnp.dtype) -> jax.Array:
        return self.Dense_1(jax.nn.gelu(self.Dense_0(x, dtype), approximate=True), dtype)


class Encoder1DBlock(nnx.Module):
    """Pre-LN transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: SiglipConfig, *, rngs: nnx.Rngs):
        self.LayerNorm_0 = LayerNorm(config.width, param_dtype=config.param_dtype, rngs=rngs)
        self.MultiHeadDotProductAttention_0 = MultiHeadDotProductAttention(config, rngs=rngs)
        self.LayerNorm_1 = LayerNorm(config.width, param_dtype=config.param_dtype, rngs=rngs)
        self.MlpBlock_0 = MlpBlock(config, rngs=rngs)

    def __call__(self, x: jax.Array, dtype: jnp.dtype) -> jax.Array:
        x = x + self.MultiHeadDotProductAttention_0(self.LayerNorm_0(x, dtype), dtype)
        return x + self.MlpBlock_0(self.LayerNorm_1(x, dtype), dtype)


class Encoder(nnx.Module):
    """The scanned block stack (`encoderblock`, leading depth axis) and the final `encoder_norm`."""

    def __init__(self, config: SiglipConfig, *, rngs: nnx.Rngs):
        self.encoderblock = stack.create(lambda r: Encoder1DBlock(config, rngs=r), config.depth, rngs)
        self.remat = config.remat
        self.encoder_norm = LayerNorm(config.width, param_dtype=config.param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, dtype: jnp.dtype) -> jax.Array:
        x, _ = stack.scan(self.encoderblock, lambda block, h, _: (block(h, dtype), None), x, remat=self.remat)
        return self.encoder_norm(x, dtype)


# x / 255 * 2 - 1 in float32 for every uint8 value, as numpy computes it (openpi's `Observation.from_dict`). Looked up,
# not computed in the jitted program: XLA turns the division by a constant into a multiplication by 1/255, which
# differs in the last bit for 205 of the 256 values.
_PIXELS = np.arange(256, dtype=np.float32) / np.float32(255.0) * np.float32(2.0) - np.float32(1.0)


def pixels(images: jax.Array) -> jax.Array:
    """uint8 images -> float32 in [-1, 1] (x / 255 * 2 - 1, openpi's `Observation.from_dict`), on the device; images
    of another dtype are taken as already in [-1, 1]. Host pipelines send uint8: a quarter of float32's bytes."""
    if images.dtype == jnp.uint8:
        return jnp.asarray(_PIXELS)[images]
    return images


class Siglip(nnx.Module):
    """SigLIP ViT, pool "none": images (B, S, S, 3) in [-1, 1] -> tokens (B, num_patches, num_classes or width)."""

    def __init__(self, config: SiglipConfig, *, rngs: nnx.Rngs):
        self.config = config
        p = config.patch_size
        self.embedding = Dense(
            (p, p, 3),
            (config.width,),
            param_dtype=config.param_dtype,
            rngs=rngs,
            kernel_init=jax.nn.initializers.lecun_normal(),
        )
        std = 1.0 / math.sqrt(config.width)
        self.pos_embedding = _param(
            rngs, jax.nn.initializers.normal(std), (1, config.num_patches, config.width), config.param_dtype
        )
        self.Transformer = Encoder(config, rngs=rngs)
        if config.num_classes:
            zeros = jax.nn.initializers.zeros
            self.head = Dense((config.width,), (config.num_classes,), param_dtype=config.param_dtype,
                              rngs=rngs, kernel_init=zeros)  # fmt: skip

    def __call__(self, images: jax.Array) -> jax.Array:
        config = self.config
        b, h, w, c = images.shape
        if (h, w, c) != (config.image_size, config.image_size, 3):
            raise ValueError(
                f"siglip: images of shape {images.shape} given, expected (B, {config.image_size}, "
                f"{config.image_size}, 3); resize with pad first"
            )
        p = config.patch_size
        # Patch extraction as a VALID, stride-p convolution (== non-overlapping patches @ kernel), in f32.
        x = images.astype(jnp.float32).reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = self.embedding(x, jnp.float32).reshape(b, -1, config.width)
        x = x + self.pos_embedding[...].astype(jnp.float32)
        dtype = jnp.dtype(config.dtype)
        x = self.Transformer(x.astype(dtype), dtype)
        if config.num_classes:
            x = self.head(x, dtype)
        return x
