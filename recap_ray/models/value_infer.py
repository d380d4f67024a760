"""Batched value inference: per-camera uint8 frames + prompt strings -> V(o) in [v_min, v_max].

The jitted step takes uint8 images already at the tower's size (normalised to [-1, 1] on device,
a quarter of the float32 transfer); frames of another size are resized with pad on the host first.
Batches smaller than `batch_size` are padded so one compiled program serves every call.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from recap_ray.models import value as value_lib
from recap_ray.models import value_preprocess, value_tokenizer, value_weights
from recap_ray.models.value_config import ValueModelConfig

logger = logging.getLogger(__name__)


def cast_params(state: Any, dtype: str | None) -> Any:
    """Floating leaves cast to `dtype` (None: unchanged)."""
    if dtype is None:
        return state
    target = jnp.dtype(dtype)
    return jax.tree.map(lambda a: a.astype(target) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)


def inference_config(config: ValueModelConfig, dtype: str | None) -> ValueModelConfig:
    """`config` with Gemma3 and SigLIP computing in `dtype` (None: pistar's f32 Gemma / bf16 SigLIP)."""
    if dtype is None:
        return config
    return dataclasses.replace(
        config,
        llm=dataclasses.replace(config.llm, dtype=dtype),
        siglip=dataclasses.replace(config.siglip, dtype=dtype),
    )


def value_step(graphdef: nnx.GraphDef) -> Any:
    """jit((state, uint8 images (B,C,S,S,3), masks (B,C), tokens, token_mask) -> V (B,) float32)."""

    def step(state: Any, images: jax.Array, masks: jax.Array, tokens: jax.Array, token_mask: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state).value(images, masks, tokens, token_mask)

    return jax.jit(step)


class ValueEstimator:
    """Loads once, then `estimator(frames, prompts)` -> np.ndarray (B,) of V per frame."""

    def __init__(
        self,
        config: ValueModelConfig,
        model: value_lib.ValueModel,
        tokenizer: value_tokenizer.ValueTokenizer,
        *,
        dtype: str | None = None,
        batch_size: int | None = None,
    ):
        self.config = inference_config(config, dtype)
        graphdef, state = nnx.split(model)
        if dtype is not None:  # rebuild the graph with the compute dtype of `self.config`
            graphdef = nnx.graphdef(self.config.abstract_model())
        self._state = jax.device_put(cast_params(state, dtype))
        self._step = value_step(graphdef)
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(
        cls,
        config: ValueModelConfig,
        checkpoint: epath.PathLike,
        *,
        tokenizer_path: epath.PathLike | None = None,
        use_ema: bool = True,
        **kwargs: Any,
    ) -> "ValueEstimator":
        """From a pistar value checkpoint (`step_*` dir or its parent, local or gs://), EMA params by default.

        Tokenizer: `tokenizer_path`, else $OPENPI_VALUE_TOKENIZER_PATH / $GEMMA_TOKENIZER_PATH,
        else the bundle's tokenizer.model under $OPENPI_VLM_CKPT_DIR.
        """
        model = value_weights.load_model(config, checkpoint=checkpoint, use_ema=use_ema)
        return cls(config, model, _tokenizer(tokenizer_path, config), **kwargs)

    def __call__(self, frames: Mapping[str, np.ndarray | None], prompts: Sequence[str]) -> np.ndarray:
        """frames: camera name -> uint8 (B, H, W, 3) (None or absent: masked camera); B prompts."""
        images, masks = value_preprocess.camera_batch_uint8(frames, self.config.cameras, self.config.image_size)
        if len(prompts) != images.shape[0]:
            raise ValueError(f"value inference: {len(prompts)} prompts for {images.shape[0]} frames")
        tokens, token_mask = self.tokenizer(prompts)
        n = images.shape[0]
        pad = 0 if self.batch_size is None else -n % self.batch_size
        arrays = [images, masks, tokens, token_mask]
        if pad:
            arrays = [np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for a in arrays]
        return np.asarray(self._step(self._state, *arrays))[:n]


def _tokenizer(path: epath.PathLike | None, config: ValueModelConfig) -> value_tokenizer.ValueTokenizer:
    try:
        return value_tokenizer.ValueTokenizer.resolve(path, config.max_token_len)
    except FileNotFoundError:
        if path is not None:
            raise
        root = value_weights.resolve_bundle_dir(None)
        return value_tokenizer.ValueTokenizer(root / value_weights.TOKENIZER_FILE, config.max_token_len)
