"""Gemma as a mixture of transformers with shared attention (openpi `models/gemma.py`), in NNX.

Expert 0 is PaliGemma's Gemma 2B, expert 1 the action expert (Gemma 300M). Each expert applies
its own norms, projections and MLP to its own tokens; q/k/v of all experts are concatenated on
the sequence axis for one joint attention. Expert `i > 0` weights carry an `_i` suffix
(`q_einsum_1`, `mlp_1`, `pre_attention_norm_1`, `final_norm_1`); layers are scanned, so every
`layers/...` leaf has a leading depth axis. An expert with `adarms=True` uses adaptive RMSNorm
(`Dense_0` producing scale, shift and a residual gate from a conditioning vector).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from recap_ray.models import lora, stack

PALIGEMMA_VOCAB_SIZE = 257_152
_BIG_NEG = -2.3819763e38  # gemma's mask value

KVCache = tuple[jax.Array, jax.Array]  # (k, v), each (depth, B, S, num_kv_heads, head_dim)


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    """Sizes of one Gemma expert."""

    width: int  # model width D
    depth: int  # layers (all experts share it)
    mlp_dim: int  # GeGLU hidden width F
    num_heads: int  # query heads N (shared by experts)
    num_kv_heads: int  # key/value heads K (shared)
    head_dim: int  # H (shared)
    lora_attn: lora.LoRAConfig | None = None  # LoRA on q/kv/attn_vec einsums
    lora_ffn: lora.LoRAConfig | None = None  # LoRA on the MLP

    @property
    def has_lora(self) -> bool:
        return self.lora_attn is not None or self.lora_ffn is not None


def _variants() -> dict[str, GemmaConfig]:
    g2b = GemmaConfig(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256)
    g300m = GemmaConfig(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256)
    dummy = GemmaConfig(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16)  # openpi's "dummy"
    tiny = GemmaConfig(width=64, depth=2, mlp_dim=128, num_heads=4, num_kv_heads=1, head_dim=16)
    tiny_expert = GemmaConfig(width=32, depth=2, mlp_dim=64, num_heads=4, num_kv_heads=1, head_dim=16)
    small = GemmaConfig(width=64, depth=3, mlp_dim=256, num_heads=4, num_kv_heads=1, head_dim=16)

    def with_lora(c: GemmaConfig, rank: int) -> GemmaConfig:
        cfg = lora.LoRAConfig(rank=rank, alpha=float(rank))
        return dataclasses.replace(c, lora_attn=cfg, lora_ffn=cfg)

    return {
        "gemma_2b": g2b,
        "gemma_300m": g300m,
        "gemma_2b_lora": with_lora(g2b, 16),
        "gemma_300m_lora": with_lora(g300m, 32),
        "dummy": dummy,
        "tiny": tiny,
        "tiny_expert": tiny_expert,
        "small": small,  # the simulated task's LLM and action expert (pi06_sim_small)
        "tiny_lora": with_lora(tiny, 4),
        "tiny_expert_lora": with_lora(tiny_expert, 8),
    }


VARIANTS: dict[str, GemmaConfig] = _variants()


def get_variant(name: str) -> GemmaConfig:
    """The Gemma sizes for a variant name (openpi names, incl. its test size "dummy", plus our `tiny*` / `small`)."""
    if name not in VARIANTS:
        raise KeyError(f"unknown gemma variant {name!r}; known: {sorted(VARIANTS)}")
    return VARIANTS[name]


def _name(name: str, i: int) -> str:
    return name if i == 0 else f"{name}_{i}"


class RMSNorm(nnx.Module):
    """RMSNorm in f32 with `(1 + scale)`; adaptive (`Dense_0` -> scale, shift, gate) when `cond_dim`."""

    def __init__(self, width: int, cond_dim: int | None, *, dtype: str, param_dtype: str, rngs: nnx.Rngs):
        self.adaptive = cond_dim is not None
        if cond_dim is None:
            self.scale = nnx.Param(jnp.zeros((width,), jnp.dtype(param_dtype)))
        else:
            self.Dense_0 = nnx.Linear(cond_dim, 3 * width, kernel_init=nnx.initializers.zeros, dtype=jnp.dtype(dtype),
                                      param_dtype=jnp.dtype(param_dtype), rngs=rngs)  # fmt: skip

    def __call__(self, x: jax.Array, cond: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
        normed = x * jax.lax.rsqrt(var + 1e-6)
        if not self.adaptive:
            return (normed * (1 + self.scale[...])).astype(x.dtype), None
        if cond is None:
            raise ValueError("adaptive RMSNorm needs a conditioning vector (adarms_cond)")
        scale, shift, gate = jnp.split(self.Dense_0(cond)[:, None, :], 3, axis=-1)
        return (normed * (1 + scale) + shift).astype(x.dtype), gate


def apply_rope(x: jax.Array, positions: jax.Array, max_wavelength: float = 10_000.0) -> jax.Array:
    """Rotary embedding (split halves) of x (B, L, N, H) at integer positions (B, L), math in f32."""
    freq = (2.0 / x.shape[-1]) * jnp.arange(x.shape[-1] // 2, dtype=jnp.float32)
    radians = (positions[..., None] / max_wavelength**freq)[..., None, :]
    sin, cos = jnp.sin(radians), jnp.cos(radians)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Attention(nnx.Module):
    """Per-expert q/kv/out einsums around one joint (grouped-query) softmax attention."""

    def __init__(self, configs: Sequence[GemmaConfig], *, param_dtype: str, rngs: nnx.Rngs):
        self.configs = tuple(configs)
        lecun = jax.nn.initializers.lecun_normal
        for i, c in enumerate(configs):
            kw = {"lora": c.lora_attn, "param_dtype": param_dtype, "rngs": rngs}
            q = lora.Einsum((c.num_heads, c.width, c.head_dim), lecun(in_axis=-2, out_axis=-1, batch_axis=(0,)), **kw)
            kv_init = lecun(in_axis=-2, out_axis=-1, batch_axis=(0, 1))
            kv = lora.Einsum((2, c.num_kv_heads, c.width, c.head_dim), kv_init, **kw)
            out = lora.Einsum((c.num_heads, c.head_dim, c.width), lecun(in_axis=(-3, -2), out_axis=-1), **kw)
            setattr(self, _name("q_einsum", i), q)
            setattr(self, _name("kv_einsum", i), kv)
            setattr(self, _name("attn_vec_einsum", i), out)

    def __call__(
        self, xs: Sequence[jax.Array | None], positions: jax.Array, mask: jax.Array, kv_cache: KVCache | None
    ) -> tuple[list[jax.Array | None], KVCache]:
        qs, ks, vs = [], [], []
        for i, x in enumerate(xs):
            if x is None:
                continue
            qs.append(getattr(self, _name("q_einsum", i))("BTD,NDH->BTNH", x))
            k, v = getattr(self, _name("kv_einsum", i))("BSD,2KDH->2BSKH", x)
            ks.append(k)
            vs.append(v)
        q, k, v = (jnp.concatenate(t, axis=1) for t in (qs, ks, vs))
        head_dim = self.configs[0].head_dim
        q = apply_rope(q, positions) * jnp.asarray(head_dim**-0.5, q.dtype)
        k = apply_rope(k, positions)
        if kv_cache is not None:
            k = jnp.concatenate([kv_cache[0], k], axis=1)
            v = jnp.concatenate([kv_cache[1], v], axis=1)
        b, t, n, h = q.shape
        kheads = self.configs[0].num_kv_heads
        if mask.shape != (b, t, k.shape[1]):
            raise ValueError(f"attention mask {mask.shape} does not match (batch, queries, keys) {(b, t, k.shape[1])}")
        q = q.reshape(b, t, kheads, n // kheads, h)
        logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
        logits = jnp.where(mask[:, None, None, :, :], logits, _BIG_NEG)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        encoded = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(b, t, n, h)
        out, start = [], 0
        for i, x in enumerate(xs):
            if x is None:
                out.append(None)
                continue
            end = start + x.shape[1]
            out.append(getattr(self, _name("attn_vec_einsum", i))("BTNH,NHD->BTD", encoded[:, start:end]))
            start = end
        return out, (k, v)


def _residual(x: jax.Array | None, y: jax.Array | None, gate: jax.Array | None) -> jax.Array | None:
    if x is None:
        return None
    return x + y if gate is None else x + y * gate


class Block(nnx.Module):
    """Pre-norm Gemma block over all experts (no post-norms)."""

    def __init__(self, configs: Sequence[GemmaConfig], adarms: Sequence[bool], *, dtype: str, param_dtype: str,
                 rngs: nnx.Rngs):  # fmt: skip
        self.attn = Attention(configs, param_dtype=param_dtype, rngs=rngs)
        for i, (c, ada) in enumerate(zip(configs, adarms, strict=True)):
            kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
            cond_dim = c.width if ada else None
            setattr(self, _name("pre_attention_norm", i), RMSNorm(c.width, cond_dim, **kw))
            setattr(self, _name("pre_ffw_norm", i), RMSNorm(c.width, cond_dim, **kw))
            setattr(self, _name("mlp", i), lora.FeedForward(c.width, c.mlp_dim, lora=c.lora_ffn,
                                                            param_dtype=param_dtype, rngs=rngs))  # fmt: skip

    def __call__(self, xs: list, kv_cache: KVCache | None, positions: jax.Array, mask: jax.Array,
                 conds: Sequence[jax.Array | None]) -> tuple[list, KVCache]:  # fmt: skip
        normed, gates = [], []
        for i, x in enumerate(xs):
            y, g = getattr(self, _name("pre_attention_norm", i))(x, conds[i]) if x is not None else (None, None)
            normed.append(y)
            gates.append(g)
        attn_out, kv = self.attn(normed, positions, mask, kv_cache)
        xs = [_residual(x, y, g) for x, y, g in zip(xs, attn_out, gates, strict=True)]
        outs, gates = [], []
        for i, x in enumerate(xs):
            if x is None:
                outs.append(None)
                gates.append(None)
                continue
            y, g = getattr(self, _name("pre_ffw_norm", i))(x, conds[i])
            outs.append(getattr(self, _name("mlp", i))(y))
            gates.append(g)
        return [_residual(x, y, g) for x, y, g in zip(xs, outs, gates, strict=True)], kv


class Embedder(nnx.Module):
    """The token embedding table `input_embedding` (expert 0 only), N(0, 1) initialised."""

    def __init__(self, vocab_size: int, width: int, *, param_dtype: str, rngs: nnx.Rngs):
        init = jax.nn.initializers.normal(1.0)
        self.input_embedding = nnx.Param(init(rngs.params(), (vocab_size, width), jnp.dtype(param_dtype)))


class Gemma(nnx.Module):
    """The `llm` subtree: `embedder`, scanned `layers`, `final_norm` / `final_norm_1`."""

    def __init__(
        self,
        configs: Sequence[GemmaConfig],
        adarms: Sequence[bool],
        *,
        vocab_size: int = PALIGEMMA_VOCAB_SIZE,
        dtype: str = "bfloat16",
        param_dtype: str = "float32",
        remat: str = "nothing_saveable",
        rngs: nnx.Rngs,
    ):
        """`remat`: what each layer keeps for the backward pass (stack.REMAT_POLICIES)."""
        if len({c.depth for c in configs}) != 1 or len({(c.num_heads, c.num_kv_heads, c.head_dim) for c in configs}) != 1:
            raise ValueError(f"gemma experts must share depth, heads, kv heads and head_dim: {configs}")
        self.configs, self.adarms, self.dtype = tuple(configs), tuple(adarms), jnp.dtype(dtype)
        self.remat = remat  # checked where it is used (stack.scan)
        self.embedder = Embedder(vocab_size, configs[0].width, param_dtype=param_dtype, rngs=rngs)
        self.layers = stack.create(
            lambda r: Block(configs, adarms, dtype=dtype, param_dtype=param_dtype, rngs=r), configs[0].depth, rngs
        )
        for i, (c, ada) in enumerate(zip(configs, adarms, strict=True)):
            norm = RMSNorm(c.width, c.width if ada else None, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            setattr(self, _name("final_norm", i), norm)

    def embed(self, tokens: jax.Array) -> jax.Array:
        """Token ids (B, L) -> embeddings (B, L, D0) scaled by sqrt(D0), in the compute dtype."""
        table = self.embedder.input_embedding[...]
        x = table[tokens]
        return (x * jnp.sqrt(table.shape[1]).astype(x.dtype)).astype(self.dtype)

    def __call__(
        self,
        xs: Sequence[jax.Array | None],
        positions: jax.Array,
        mask: jax.Array,
        adarms_cond: Sequence[jax.Array | None] | None = None,
        *,
        kv_cache: KVCache | None = None,
    ) -> tuple[list[jax.Array | None], KVCache]:
        """Run the experts over their token lists (None: expert skipped); returns outputs and per-layer K/V.

        mask (B, T, S) is True where query t may attend key s; S includes the cached keys first.
        """
        conds = list(adarms_cond) if adarms_cond is not None else [None] * len(self.configs)
        xs = [None if x is None else x.astype(self.dtype) for x in xs]

        def body(block: Block, carry: list, cache: KVCache | None) -> tuple[list, KVCache]:
            return block(carry, cache, positions, mask, conds)

        xs, kv = stack.scan(self.layers, body, xs, kv_cache, remat=self.remat)
        outs = [
            None if x is None else getattr(self, _name("final_norm", i))(x, conds[i])[0] for i, x in enumerate(xs)
        ]
        return outs, kv
