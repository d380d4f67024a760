"""Gemma3 decoder stack (Gemma3-270M and a tiny variant) in Flax NNX, run on continuous embeddings.

Parameter names follow the nested tree of google-deepmind/gemma's linen `Transformer`, as held under
`llm/` in pistar's value model: `embedder/input_embedding`, `layer_{i}/attn/{q_einsum,kv_einsum,
attn_vec_einsum}/w`, `layer_{i}/attn/{_query_norm,_key_norm}/scale`, `layer_{i}/mlp/{gating_einsum,
linear}`, the four per-layer norms and `final_norm/scale`. Layers are not scanned (one key each).

Differences from Gemma 1/2 that matter here: RMSNorm on q and k (QK-norm) before RoPE; post-attention
and post-ffw norms; local sliding-window layers (RoPE base 10k) with a global layer every sixth
(RoPE base 1M); no logit soft-capping. RoPE itself is the policy's (`gemma.apply_rope`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from recap_ray.models import gemma

# Large negative logit for masked attention entries (gemma's K_MASK).
_K_MASK = -2.3819763e38


@dataclasses.dataclass(frozen=True)
class Gemma3Config:
    """Sizes and attention layout of a Gemma3 decoder."""

    # Model width (embed_dim).
    width: int = 640
    # Number of transformer layers.
    depth: int = 18
    # Hidden size of the gated MLP.
    mlp_dim: int = 2048
    # Query heads.
    num_heads: int = 4
    # Key/value heads (1 = multi-query attention).
    num_kv_heads: int = 1
    # Size of one attention head.
    head_dim: int = 256
    # Rows of the token embedding table.
    vocab_size: int = 262_144
    # Local layers let a query see keys with |pos_q - pos_k| < sliding_window.
    sliding_window: int = 512
    # Every `global_every`-th layer (1-based) is global; the others are local.
    global_every: int = 6
    # RoPE base frequency of local layers.
    local_rope_base: float = 10_000.0
    # RoPE base frequency of global layers.
    global_rope_base: float = 1_000_000.0
    # Activation / matmul dtype; parameters are always float32 (pistar runs Gemma3 in float32).
    dtype: str = "float32"

    @classmethod
    def variant(cls, name: str) -> "Gemma3Config":
        """Named sizes: "gemma3_270m" (pistar's value backbone) or "tiny" (tests)."""
        if name == "gemma3_270m":
            return cls()
        if name == "tiny":
            return cls(
                width=32, depth=2, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=16,
                vocab_size=400, sliding_window=4, global_every=2,
            )
        raise ValueError(f"unknown Gemma3 variant {name!r}; expected 'gemma3_270m' or 'tiny'")

    def is_global(self, layer: int) -> bool:
        """Whether layer `layer` (0-based) attends globally."""
        return (layer + 1) % self.global_every == 0


class RMSNorm(nnx.Module):
    """x * rsqrt(mean(x^2) + 1e-6) * (1 + scale); scale starts at 0. Computed in float32."""

    def __init__(self, dim: int):
        self.scale = nnx.Param(jnp.zeros((dim,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + 1e-6)
        return (normed * (1.0 + self.scale[...].astype(jnp.float32))).astype(x.dtype)


class Einsum(nnx.Module):
    """A single weight `w` (gemma's `Einsum` layer), normal(0.01) init."""

    def __init__(self, shape: tuple[int, ...], rngs: nnx.Rngs):
        self.w = nnx.Param(0.01 * jax.random.normal(rngs.params(), shape, jnp.float32))

    def __call__(self, eqn: str, x: jax.Array) -> jax.Array:
        return jnp.einsum(eqn, x, self.w[...].astype(x.dtype))


class Attention(nnx.Module):
    """Multi-query/grouped attention with QK-norm, RoPE and an optional sliding window."""

    def __init__(self, config: Gemma3Config, *, is_global: bool, rngs: nnx.Rngs):
        c = config
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.rope_base = c.global_rope_base if is_global else c.local_rope_base
        self.window = None if is_global else c.sliding_window
        self.q_einsum = Einsum((c.num_heads, c.width, c.head_dim), rngs)
        self.kv_einsum = Einsum((2, c.num_kv_heads, c.width, c.head_dim), rngs)
        self.attn_vec_einsum = Einsum((c.num_heads, c.head_dim, c.width), rngs)
        self._query_norm = RMSNorm(c.head_dim)
        self._key_norm = RMSNorm(c.head_dim)

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
        """x (B, L, D), positions (B, L), mask (B, L, L) bool -> (B, L, D)."""
        q = self.q_einsum("BTD,NDH->BTNH", x)
        k, v = self.kv_einsum("BSD,CKDH->CBSKH", x)
        q = gemma.apply_rope(self._query_norm(q), positions, self.rope_base) * self.head_dim**-0.5
        k = gemma.apply_rope(self._key_norm(k), positions, self.rope_base)
        if self.window is not None:
            dist = positions[:, :, None] - positions[:, None, :]
            mask = mask & (jnp.abs(dist) < self.window)
        b, t = q.shape[:2]
        groups = self.num_heads // self.num_kv_heads
        q = q.reshape(b, t, self.num_kv_heads, groups, self.head_dim)
        logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
        logits = jnp.where(mask[:, None, None], logits, _K_MASK)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        encoded = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(b, t, self.num_heads, self.head_dim)
        return self.attn_vec_einsum("BTNH,NHD->BTD", encoded)


class FeedForward(nnx.Module):
    """Gated GELU MLP; `gating_einsum` (2, F, D) = [gate, up], `linear` (F, D), no `/w` level."""

    def __init__(self, width: int, mlp_dim: int, rngs: nnx.Rngs):
        init = jax.random.normal
        self.gating_einsum = nnx.Param(0.01 * init(rngs.params(), (2, mlp_dim, width), jnp.float32))
        self.linear = nnx.Param(0.01 * init(rngs.params(), (mlp_dim, width), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = jnp.einsum("...D,CFD->...CF", x, self.gating_einsum[...].astype(x.dtype))
        hidden = jax.nn.gelu(gate[..., 0, :], approximate=True) * gate[..., 1, :]
        return jnp.einsum("...F,FD->...D", hidden, self.linear[...].astype(x.dtype))


class Block(nnx.Module):
    """Pre-norm residual block with post-norms on both branches."""

    def __init__(self, config: Gemma3Config, *, is_global: bool, rngs: nnx.Rngs):
        self.pre_attention_norm = RMSNorm(config.width)
        self.attn = Attention(config, is_global=is_global, rngs=rngs)
        self.post_attention_norm = RMSNorm(config.width)
        self.pre_ffw_norm = RMSNorm(config.width)
        self.mlp = FeedForward(config.width, config.mlp_dim, rngs)
        self.post_ffw_norm = RMSNorm(config.width)

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
        h = x + self.post_attention_norm(self.attn(self.pre_attention_norm(x), positions, mask))
        return h + self.post_ffw_norm(self.mlp(self.pre_ffw_norm(h)))


class Embedder(nnx.Module):
    """Token table `input_embedding` (vocab, width), normal(0.01) init."""

    def __init__(self, vocab_size: int, width: int, rngs: nnx.Rngs):
        self.input_embedding = nnx.Param(
            0.01 * jax.random.normal(rngs.params(), (vocab_size, width), jnp.float32)
        )


class Gemma3(nnx.Module):
    """Gemma3 decoder: `embed` tokens, then `__call__` on a sequence of embeddings."""

    def __init__(self, config: Gemma3Config, rngs: nnx.Rngs):
        self.config = config
        self.embedder = Embedder(config.vocab_size, config.width, rngs)
        for i in range(config.depth):
            setattr(self, f"layer_{i}", Block(config, is_global=config.is_global(i), rngs=rngs))
        self.final_norm = RMSNorm(config.width)

    def embed(self, tokens: jax.Array) -> jax.Array:
        """Token ids (B, L) -> table rows x sqrt(width), in the compute dtype."""
        x = self.embedder.input_embedding[...][tokens]
        return (x * math.sqrt(self.config.width)).astype(self.config.dtype)

    def __call__(self, embeddings: jax.Array, mask: jax.Array) -> jax.Array:
        """Bidirectional pass: embeddings (B, L, D), valid mask (B, L) -> final-normed (B, L, D).

        Positions are 0..L-1 for every row; attention is allowed between two valid tokens
        (local layers also need |pos_q - pos_k| < sliding_window).
        """
        b, length = mask.shape
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
        attn_mask = mask[:, None, :] & mask[:, :, None]
        x = embeddings.astype(self.config.dtype)
        for i in range(self.config.depth):
            x = getattr(self, f"layer_{i}")(x, positions, attn_mask)
        return self.final_norm(x)
