"""Sizes and switches of the pi0.5 / pi0.6 policy model (openpi `Pi0Config(pi05=True)` + pistar)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
from flax import nnx

from recap_ray.models import gemma, lora, siglip, stack

if TYPE_CHECKING:
    from recap_ray.models import pi05

# Camera order of the prefix (openpi IMAGE_KEYS).
IMAGE_KEYS: tuple[str, ...] = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


@dataclasses.dataclass(frozen=True)
class Pi05Config:
    """pi0.5 model: SigLIP + Gemma 2B + Gemma 300M action expert, adaRMS time conditioning."""

    action_dim: int = 32  # padded action (and state) width
    action_horizon: int = 50  # actions per chunk
    max_token_len: int = 203  # prompt tokens; openpi pi05 200, pistar adds 3 for the advantage clause
    dtype: str = "bfloat16"  # compute dtype
    param_dtype: str = "float32"  # dtype parameters are created in
    paligemma_variant: str = "gemma_2b"  # expert 0 (see gemma.VARIANTS)
    action_expert_variant: str = "gemma_300m"  # expert 1
    siglip_variant: str = "So400m/14"  # big_vision "<size>/<patch>" ("So400m/14", "mu/14", ...), "small" or "tiny"
    image_size: int = 224  # square camera side fed to SigLIP
    vocab_size: int = gemma.PALIGEMMA_VOCAB_SIZE  # embedding rows
    pistar: bool = True  # pistar loss weighting w(t) = 0.5 exp(-0.5 (1 - t)); adv_ind in the prompt
    discrete_state_input: bool = True  # state enters as discretised prompt text (transform side)
    image_keys: tuple[str, ...] = IMAGE_KEYS  # prefix camera order
    remat: str = "nothing_saveable"  # what each SigLIP / Gemma layer keeps for backward (stack.REMAT_POLICIES)

    def __post_init__(self) -> None:
        stack.check_remat(self.remat)

    @property
    def paligemma(self) -> gemma.GemmaConfig:
        return gemma.get_variant(self.paligemma_variant)

    @property
    def action_expert(self) -> gemma.GemmaConfig:
        return gemma.get_variant(self.action_expert_variant)

    @property
    def siglip(self) -> siglip.SiglipConfig:
        kw = {"num_classes": self.paligemma.width, "image_size": self.image_size, "dtype": self.dtype,
              "param_dtype": self.param_dtype, "remat": self.remat}  # fmt: skip
        if self.siglip_variant == "small":
            return siglip.SiglipConfig.small(**kw)
        if self.siglip_variant == "tiny":
            return siglip.SiglipConfig.tiny(**kw)
        return siglip.SiglipConfig.from_variant(self.siglip_variant, **kw)

    @property
    def prefix_len(self) -> int:
        return len(self.image_keys) * self.siglip.num_patches + self.max_token_len

    @property
    def has_lora(self) -> bool:
        return self.paligemma.has_lora or self.action_expert.has_lora

    def is_frozen(self, path: str) -> bool:
        """Whether the leaf at '/'-joined `path` is frozen in training (openpi's LoRA freeze filter)."""
        return lora.is_frozen(path, llm_lora=self.paligemma.has_lora, expert_lora=self.action_expert.has_lora)

    def trainable_filter(self) -> Any:
        """nnx filter of the parameters that train: all of them, or openpi's LoRA selection."""
        return nnx.All(nnx.Param, lambda path, _: not self.is_frozen("/".join(str(k) for k in path)))

    def frozen_filter(self) -> Any:
        """nnx filter of the frozen parameters (openpi casts these to bfloat16 for LoRA training)."""
        return nnx.All(nnx.Param, lambda path, _: self.is_frozen("/".join(str(k) for k in path)))

    def create(self, rngs: nnx.Rngs) -> pi05.Pi05:
        """A freshly initialised model."""
        from recap_ray.models import pi05

        return pi05.Pi05(self, rngs=rngs)

    def abstract_model(self) -> pi05.Pi05:
        """The model with `jax.ShapeDtypeStruct` leaves; nothing allocated."""
        return nnx.eval_shape(lambda: self.create(nnx.Rngs(0)))

    def abstract_params(self) -> dict[str, Any]:
        """Nested dict of `jax.ShapeDtypeStruct`, keyed as openpi's params pure dict."""
        return nnx.to_pure_dict(nnx.state(self.abstract_model(), nnx.Param))

    def fake_inputs(self, batch: int = 1) -> tuple[dict[str, Any], jax.ShapeDtypeStruct]:
        """Abstract model inputs: (observation dict, actions) as `jax.ShapeDtypeStruct`s."""
        import jax.numpy as jnp

        s = self.image_size
        obs = {
            "images": {k: jax.ShapeDtypeStruct((batch, s, s, 3), jnp.float32) for k in self.image_keys},
            "image_masks": {k: jax.ShapeDtypeStruct((batch,), jnp.bool_) for k in self.image_keys},
            "tokenized_prompt": jax.ShapeDtypeStruct((batch, self.max_token_len), jnp.int32),
            "tokenized_prompt_mask": jax.ShapeDtypeStruct((batch, self.max_token_len), jnp.bool_),
        }
        return obs, jax.ShapeDtypeStruct((batch, self.action_horizon, self.action_dim), jnp.float32)
