"""Config of the RECAP value model: sizes, freeze mode, EMA decay; builds the NNX model.

Named instances (`value`, `value_tiny`) are registered in `recap_ray/configs/value.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx

from recap_ray.models import c51, gemma3, siglip, value

FREEZE_MODES = ("all_backbones", "siglip_only", "none")


@dataclasses.dataclass(frozen=True)
class ValueModelConfig:
    """pistar's ValueModelConfig (So400m/14 + Gemma3-270M + C51 head) and its training knobs."""

    # Registry name.
    name: str
    # SigLIP tower (pool "none", no head); pistar runs its matmuls in bfloat16.
    siglip: siglip.SiglipConfig = siglip.SiglipConfig.so400m()
    # Gemma3 decoder; pistar runs it in float32.
    llm: gemma3.Gemma3Config = gemma3.Gemma3Config()
    # Heads of the text->image cross-attention (head_dim = llm.width / heads; 640/8 = 80).
    cross_attention_heads: int = 8
    # C51 atoms on [v_min, v_max].
    num_atoms: int = c51.NUM_ATOMS
    # Lowest atom (value of a failed episode).
    v_min: float = c51.V_MIN
    # Highest atom (value at success).
    v_max: float = c51.V_MAX
    # Prompt length in tokens (pistar forces 48).
    max_token_len: int = 48
    # Cameras in model order, sorted as pistar's jit sees them; training uses exactly these two
    # (labelling may add "right_wrist_0_rgb", which sorts between them).
    cameras: tuple[str, ...] = ("base_0_rgb", "wrist_0_rgb")
    # Which parameters train: "all_backbones" (heads only), "siglip_only" (all but img/), "none" (all).
    freeze_mode: str = "all_backbones"
    # EMA decay applied after every step over all parameters (pistar hardcodes 0.99).
    ema_decay: float = 0.99
    # --- training (pistar's scripts/train_value.py defaults) ---
    # Global batch (frames), split over every device.
    batch_size: int = 32
    # Optimizer steps.
    num_train_steps: int = 30_000
    # Peak and final learning rate of the warmup + cosine schedule (warmup min(1000, N//10)).
    peak_lr: float = 2.5e-5
    decay_lr: float = 2.5e-6
    # Random crop/rotate/colour jitter on training images.
    augment: bool = True
    # Initial weights: "bundle" = the vlm_ckpt bundle ($OPENPI_VLM_CKPT_DIR), a path (bundle dir,
    # value checkpoint, or run directory), or None for a random init (tiny configs).
    init_weights: str | None = "bundle"
    # RNG seed, metric-log and checkpoint intervals (steps).
    seed: int = 42
    log_interval: int = 100
    save_interval: int = 1000

    def __post_init__(self) -> None:
        if self.freeze_mode not in FREEZE_MODES:
            raise ValueError(f"{self.name}: freeze_mode {self.freeze_mode!r} not in {FREEZE_MODES}")
        if list(self.cameras) != sorted(self.cameras):
            raise ValueError(
                f"{self.name}: cameras {self.cameras} must be sorted: pistar feeds them in sorted key "
                "order (its image dict is re-keyed under jit), so a checkpoint expects that order"
            )
        if self.llm.width % self.cross_attention_heads:
            raise ValueError(
                f"{self.name}: llm width {self.llm.width} not divisible by "
                f"cross_attention_heads {self.cross_attention_heads}"
            )

    @property
    def image_size(self) -> int:
        """Side of the square images the tower takes."""
        return self.siglip.image_size

    def create(self, rng: jax.Array | int = 0) -> value.ValueModel:
        """A freshly initialised model (nnx defaults for the heads, as pistar)."""
        return value.ValueModel(self, nnx.Rngs(params=rng))

    def abstract_model(self) -> value.ValueModel:
        """The model with `jax.ShapeDtypeStruct` leaves; nothing is allocated."""
        return nnx.eval_shape(lambda: self.create(0))

    def abstract_params(self) -> dict[str, Any]:
        """Nested dict of `jax.ShapeDtypeStruct`, the pure-dict tree pistar saves as `params`."""
        return nnx.to_pure_dict(nnx.state(self.abstract_model(), nnx.Param))

    def trainable_filter(self) -> nnx.filterlib.Filter:
        """nnx filter of the parameters that train under `freeze_mode`."""
        return value.trainable_filter(self.freeze_mode)
