"""pistar's RECAP value model in Flax NNX: SigLIP + Gemma3 + a C51 head over [-1, 0].

Per frame: every camera image goes through the SigLIP tower (`img`, shared with the policy) and
`img_projection` (SigLIP width -> Gemma width); the prompt's token embeddings (x sqrt(width), no
gradient) cross-attend to all projected image tokens (`cross_attn_norm` on the queries only, residual
add); the sequence [image tokens..., text tokens] runs through Gemma3 (`llm`) bidirectionally; a
masked mean-pool feeds `value_head` (LayerNorm -> Linear -> GELU -> Linear) giving C51 logits.
The robot state is not an input (pistar's model never reads it).

Parameter paths equal the pure dict pistar saves under `params`/`ema_params`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx

from recap_ray.models import c51, gemma3, siglip

if TYPE_CHECKING:
    from recap_ray.models.value_config import ValueModelConfig


class ValueHead(nnx.Module):
    """LayerNorm -> Linear(width, width/2) -> GELU (tanh) -> Linear(width/2, num_atoms).

    pistar stores a dropout rate of 0.1 here but never applies it; neither do we.
    """

    def __init__(self, width: int, hidden: int, num_atoms: int, rngs: nnx.Rngs):
        self.layer_norm = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
        self.linear1 = nnx.Linear(width, hidden, rngs=rngs)
        self.linear2 = nnx.Linear(hidden, num_atoms, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear2(jax.nn.gelu(self.linear1(self.layer_norm(x)), approximate=True))


class ValueModel(nnx.Module):
    """V(o) from camera images and a tokenized prompt; see the module docstring."""

    def __init__(self, config: ValueModelConfig, rngs: nnx.Rngs):
        self.config = config
        width = config.llm.width
        self.img = siglip.Siglip(config.siglip, rngs=rngs)
        self.img_projection = nnx.Linear(config.siglip.width, width, rngs=rngs)
        self.llm = gemma3.Gemma3(config.llm, rngs)
        self.cross_attention = nnx.MultiHeadAttention(
            num_heads=config.cross_attention_heads,
            in_features=width,
            qkv_features=width,
            out_features=width,
            decode=False,
            keep_rngs=False,
            rngs=rngs,
        )
        self.cross_attn_norm = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
        self.value_head = ValueHead(width, width // 2, config.num_atoms, rngs)

    def embed(
        self,
        images: jax.Array | None,
        image_masks: jax.Array | None,
        tokens: jax.Array | None,
        token_mask: jax.Array | None,
    ) -> tuple[jax.Array, jax.Array]:
        """Build the Gemma input sequence and its valid mask (pistar's `embed_tokens`).

        images (B, C, S, S, 3) uint8 or float in [-1, 1] (`siglip.pixels`), image_masks (B, C) bool, tokens (B, L) int,
        token_mask (B, L) bool. Either modality may be None (text only: no cross-attention).
        """
        parts, masks = [], []
        img_tokens = None
        if images is not None:
            b, cams = images.shape[:2]
            flat = self.img(siglip.pixels(images.reshape(b * cams, *images.shape[2:])))  # cameras batched together
            img_tokens = self.img_projection(flat)
            img_tokens = img_tokens.reshape(b, cams * img_tokens.shape[1], img_tokens.shape[2])
            per_cam = img_tokens.shape[1] // cams
            parts.append(img_tokens)
            if image_masks is None:
                image_masks = jnp.ones((b, cams), bool)
            masks.append(jnp.repeat(image_masks.astype(bool), per_cam, axis=1))
        if tokens is not None:
            text = jax.lax.stop_gradient(self.llm.embed(tokens)).astype(jnp.float32)
            if img_tokens is not None:
                text = text + self.cross_attention(self.cross_attn_norm(text), img_tokens, img_tokens)
            parts.append(text)
            masks.append((tokens != 0) if token_mask is None else token_mask.astype(bool))
        if not parts:
            raise ValueError("value model: both images and tokens are None")
        return jnp.concatenate(parts, axis=1), jnp.concatenate(masks, axis=1)

    def __call__(
        self,
        images: jax.Array | None,
        image_masks: jax.Array | None,
        tokens: jax.Array | None,
        token_mask: jax.Array | None,
    ) -> jax.Array:
        """C51 logits (B, num_atoms), float32; arguments as in `embed`."""
        seq, mask = self.embed(images, image_masks, tokens, token_mask)
        hidden = self.llm(seq, mask).astype(jnp.float32)
        weights = mask[..., None].astype(jnp.float32)
        pooled = jnp.sum(hidden * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
        return self.value_head(pooled).astype(jnp.float32)

    def value(
        self,
        images: jax.Array | None,
        image_masks: jax.Array | None,
        tokens: jax.Array | None,
        token_mask: jax.Array | None,
    ) -> jax.Array:
        """V(o) = E[z] under softmax(logits), shape (B,), within [v_min, v_max]."""
        logits = self(images, image_masks, tokens, token_mask)
        return c51.expected_value(logits, self.config.v_min, self.config.v_max)

    def loss(
        self,
        images: jax.Array | None,
        image_masks: jax.Array | None,
        tokens: jax.Array | None,
        token_mask: jax.Array | None,
        targets: jax.Array,
    ) -> jax.Array:
        """Mean C51 cross-entropy against targets (B,), (B, 1) or distributions (B, num_atoms)."""
        logits = self(images, image_masks, tokens, token_mask)
        if self.config.v_min != c51.V_MIN or self.config.v_max != c51.V_MAX:
            raise ValueError("value model: loss supports pistar's support [-1, 0] only")
        return c51.cross_entropy(logits, targets)


def is_img_path(path: tuple[Any, ...], _value: Any) -> bool:
    """Filter: the parameter lives under `img/` (SigLIP)."""
    return bool(path) and str(path[0]) == "img"


def is_llm_path(path: tuple[Any, ...], _value: Any) -> bool:
    """Filter: the parameter lives under `llm/` (Gemma3)."""
    return bool(path) and str(path[0]) == "llm"


def trainable_filter(freeze_mode: str) -> nnx.filterlib.Filter:
    """pistar's freeze modes as an nnx filter of trainable parameters.

    all_backbones: only img_projection, cross_attention, cross_attn_norm, value_head train;
    siglip_only: everything but img/ trains (the token table still gets no gradient: stop_gradient);
    none: every parameter trains.
    """
    if freeze_mode == "none":
        return nnx.Param
    if freeze_mode == "siglip_only":
        return nnx.All(nnx.Param, nnx.Not(is_img_path))
    if freeze_mode == "all_backbones":
        return nnx.All(nnx.Param, nnx.Not(is_img_path), nnx.Not(is_llm_path))
    raise ValueError(
        f"unknown freeze_mode {freeze_mode!r}; expected 'all_backbones', 'siglip_only' or 'none'"
    )


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
    """One EMA step over every leaf: decay * ema + (1 - decay) * params (pistar: decay 0.99)."""
    return jax.tree.map(
        lambda e, p: (decay * e.astype(jnp.float32) + (1.0 - decay) * p.astype(jnp.float32)).astype(e.dtype),
        ema_params,
        params,
    )
