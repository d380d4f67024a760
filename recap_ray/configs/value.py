"""Named value-model configs: pistar's real size and a tiny one for tests and the demo."""

from __future__ import annotations

import dataclasses

from recap_ray.configs import registry
from recap_ray.models import gemma3, siglip
from recap_ray.models.value_config import ValueModelConfig

# pistar-world ValueModelConfig(gemma_variant="gemma3_270m", siglip_variant="So400m/14"):
# 683,191,609 float32 parameters, two cameras, 48 prompt tokens, C51 over 201 atoms on [-1, 0].
VALUE = registry.register(ValueModelConfig(name="value"))

# Same structure at test size: 28px images (4 SigLIP tokens each), a 2-layer Gemma3 (one local
# layer with window 4, one global), vocab 400 to match the session-trained sentencepiece model.
VALUE_TINY = registry.register(
    ValueModelConfig(
        name="value_tiny",
        siglip=siglip.SiglipConfig.tiny(),
        llm=gemma3.Gemma3Config.variant("tiny"),
        cross_attention_heads=2,
        max_token_len=8,
        batch_size=4,
        num_train_steps=20,
        peak_lr=1e-3,
        decay_lr=1e-4,
        init_weights=None,
        log_interval=5,
        save_interval=10,
    )
)

# The simulated task at a size that learns it on CPU: the `pi06_sim_small` SigLIP on 56px images,
# the tiny Gemma3, every parameter trained from random init.
VALUE_SIM = registry.register(
    dataclasses.replace(VALUE_TINY, name="value_sim", siglip=siglip.SiglipConfig.small(), freeze_mode="none",
                        batch_size=32, num_train_steps=1500, log_interval=100, save_interval=500)  # fmt: skip
)
