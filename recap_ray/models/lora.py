"""LoRA-capable Gemma weights (openpi `models/lora.py` layout) and the LoRA freeze rule.

`Einsum` holds `w` and, with LoRA, `lora_a` (last axis replaced by the rank) and `lora_b`
(second-to-last axis replaced by the rank); its delta is `(x a) b * alpha / rank`. `FeedForward`
holds `gating_einsum`, `linear` and, with LoRA, `gating_einsum_lora_{a,b}` and `linear_lora_{a,b}`;
the FFN delta is applied without the alpha/rank factor, exactly as openpi does. Both LoRA factors
are initialised N(0, 0.01^2).
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
from flax import nnx

_LORA_INIT = jax.nn.initializers.normal(stddev=0.01)


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """One LoRA adapter setting (openpi: rank 16 / alpha 16 for gemma_2b, 32 / 32 for gemma_300m)."""

    rank: int  # adapter rank r
    alpha: float = 1.0  # scaling numerator
    rslora: bool = False  # rank-stabilised scaling alpha / sqrt(r) instead of alpha / r

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.rank) if self.rslora else self.alpha / self.rank


def _lora_eqns(eqn: str) -> tuple[str, str]:
    """Split `lhs,rhs->out` into the two einsums through rank label `L` (rhs axes -2, -1)."""
    lhs, rhs, out = re.fullmatch(r"(.*),(.*)->(.*)", eqn).groups()  # type: ignore[union-attr]
    a_label, b_label = rhs[-2], rhs[-1]
    a_out = out.replace(b_label, "L")
    return f"{lhs},{rhs.replace(b_label, 'L')}->{a_out}", f"{a_out},{rhs.replace(a_label, 'L')}->{out}"


class Einsum(nnx.Module):
    """A weight `w` applied by an einsum equation, with an optional LoRA delta."""

    def __init__(
        self,
        shape: tuple[int, ...],
        init: jax.nn.initializers.Initializer,
        *,
        lora: LoRAConfig | None,
        param_dtype: str,
        rngs: nnx.Rngs,
    ):
        dtype = jnp.dtype(param_dtype)
        self.w = nnx.Param(init(rngs.params(), shape, dtype))
        self.lora = lora
        if lora is not None:
            shape_a = (*shape[:-1], lora.rank)
            shape_b = (*shape[:-2], lora.rank, shape[-1])
            self.lora_a = nnx.Param(_LORA_INIT(rngs.params(), shape_a, dtype))
            self.lora_b = nnx.Param(_LORA_INIT(rngs.params(), shape_b, dtype))

    def __call__(self, eqn: str, x: jax.Array) -> jax.Array:
        y = jnp.einsum(eqn, x, self.w[...].astype(x.dtype))
        if self.lora is not None:
            eqn_a, eqn_b = _lora_eqns(eqn)
            delta = jnp.einsum(eqn_a, x, self.lora_a[...].astype(x.dtype))
            delta = jnp.einsum(eqn_b, delta, self.lora_b[...].astype(x.dtype))
            y = y + delta * self.lora.scaling
        return y


class FeedForward(nnx.Module):
    """GeGLU MLP: gelu_tanh(x W_g[0]) * (x W_g[1]) @ W_linear, with an optional (unscaled) LoRA delta."""

    def __init__(self, width: int, hidden: int, *, lora: LoRAConfig | None, param_dtype: str, rngs: nnx.Rngs):
        dtype = jnp.dtype(param_dtype)
        init = jax.nn.initializers.lecun_normal
        self.gating_einsum = nnx.Param(
            init(in_axis=-2, out_axis=-1, batch_axis=(0,))(rngs.params(), (2, width, hidden), dtype)
        )
        self.linear = nnx.Param(init(in_axis=-2, out_axis=-1)(rngs.params(), (hidden, width), dtype))
        self.lora = lora
        if lora is not None:
            r = lora.rank
            self.gating_einsum_lora_a = nnx.Param(_LORA_INIT(rngs.params(), (2, width, r), dtype))
            self.gating_einsum_lora_b = nnx.Param(_LORA_INIT(rngs.params(), (2, r, hidden), dtype))
            self.linear_lora_a = nnx.Param(_LORA_INIT(rngs.params(), (hidden, r), dtype))
            self.linear_lora_b = nnx.Param(_LORA_INIT(rngs.params(), (r, width), dtype))

    def _dot(self, x: jax.Array, w: jax.Array, a: jax.Array | None, b: jax.Array | None) -> jax.Array:
        y = jnp.dot(x, w.astype(x.dtype))
        if a is not None:
            y = y + jnp.dot(jnp.dot(x, a.astype(x.dtype)), b.astype(x.dtype))
        return y

    def __call__(self, x: jax.Array) -> jax.Array:
        g = self.gating_einsum[...]
        if self.lora is not None:
            ga, gb = self.gating_einsum_lora_a[...], self.gating_einsum_lora_b[...]
            la, lb = self.linear_lora_a[...], self.linear_lora_b[...]
        else:
            ga = gb = la = lb = None
        gate = self._dot(x, g[0], None if ga is None else ga[0], None if gb is None else gb[0])
        up = self._dot(x, g[1], None if ga is None else ga[1], None if gb is None else gb[1])
        return self._dot(jax.nn.gelu(gate, approximate=True) * up, self.linear[...], la, lb)


def is_lora_path(path: str) -> bool:
    """True for LoRA adapter leaves (openpi's `.*lora.*`)."""
    return "lora" in path


def is_frozen(path: str, *, llm_lora: bool, expert_lora: bool) -> bool:
    """openpi's LoRA freeze filter on a '/'-joined parameter path.

    Both LoRA: every `llm` leaf but LoRA leaves is frozen. Only the PaliGemma LoRA: the action
    expert (`_1` leaves) also stays trainable. Only the expert LoRA: only the expert's non-LoRA
    leaves are frozen. Neither: nothing is frozen.
    """
    if is_lora_path(path) or "llm" not in path:
        return False
    expert = re.search(r"_1(/|$)", path) is not None
    if llm_lora and expert_lora:
        return True
    if llm_lora:
        return not expert
    if expert_lora:
        return expert
    return False
