"""Named policy configs: pistar's ten pi0.6 YAM configs (RECAP 61d70029) and `pi06_tiny[_infer]`.

Each `_infer` config equals its training twin except `adv_ind_dropout=False`, so the advantage
clause is always in the prompt when serving.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from recap_ray.configs import registry
from recap_ray.models import pi05_config

PI05_BASE = "gs://openpi-assets/checkpoints/pi05_base"
# The SFT checkpoint pistar's from_sft configs start from (HF ttotmoon/yam-vial-place-pi05-v1);
# pistar hardcodes a local path, we name the run directory and expect it under ./checkpoints.
SFT_PARAMS = "./checkpoints/yam-vial-place-pi05-v1/params"
YAM_PROMPT = "Use one arm to grasp the papercup and hand it over to the other arm"


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """One pi0.6 policy run: model, data, initial weights, optimisation."""

    name: str  # registry name
    model: pi05_config.Pi05Config = pi05_config.Pi05Config()  # model sizes and switches
    repo_id: str = "local/vial_rollout_v1_v21"  # LeRobot dataset the run trains on
    init_params: str | None = f"{PI05_BASE}/params"  # openpi params/ directory loaded at start; None: random
    assets_dir: str = f"{PI05_BASE}/assets"  # where norm stats live: <assets_dir>/<asset_id>/norm_stats.json
    asset_id: str = "trossen"  # norm-stats id
    default_prompt: str | None = YAM_PROMPT  # task text when a sample has none (None: every sample brings its own)
    adv_ind_dropout: bool = True  # drop the advantage clause at train time (never for _infer)
    adv_ind_dropout_prob: float = 0.3  # pistar's drop probability
    use_delta_joint_actions: bool = True  # joints relative to the state, grippers absolute
    adapt_to_pi: bool = False  # Trossen sign/gripper conversion; off for YAM
    batch_size: int = 56  # global batch
    num_workers: int = 8  # data-loader workers
    num_train_steps: int = 5000  # optimizer steps
    ema_decay: float | None = 0.99  # EMA of the weights; None for LoRA runs
    seed: int = 42  # RNG seed
    peak_lr: float = 2.5e-5  # cosine schedule peak
    warmup_steps: int = 1000  # linear warmup from peak/(warmup+1)
    decay_steps: int = 30_000  # cosine decay horizon, counted from step 0
    decay_lr: float = 2.5e-6  # final learning rate
    b1: float = 0.9  # AdamW beta1
    b2: float = 0.95  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 1e-10  # decoupled weight decay
    clip_gradient_norm: float = 1.0  # global-norm clip before AdamW
    log_interval: int = 100  # steps between metric logs
    save_interval: int = 1000  # steps between checkpoints
    keep_period: int = 5000  # checkpoints kept forever every this many steps
    project_name: str = "pistar"  # tracker project

    def abstract_params(self) -> dict[str, Any]:
        """The model's parameter tree as `jax.ShapeDtypeStruct`s (nothing allocated)."""
        return self.model.abstract_params()

    @property
    def is_infer(self) -> bool:
        return self.name.endswith("_infer")


_LORA = pi05_config.Pi05Config(paligemma_variant="gemma_2b_lora", action_expert_variant="gemma_300m_lora")
_LORA_RUN = {"model": _LORA, "ema_decay": None, "batch_size": 4, "num_workers": 4}
_RECAP_REPO = "local/vial_rollout_v1_v21_vlm_label"


def _pair(name: str, **kw: Any) -> tuple[PolicyConfig, PolicyConfig]:
    train = registry.register(PolicyConfig(name=name, **kw))
    infer = registry.register(dataclasses.replace(train, name=f"{name}_infer", adv_ind_dropout=False))
    return train, infer


PI06_YAM, PI06_YAM_INFER = _pair("pi06_yam_vial_30fps")
PI06_YAM_LORA, PI06_YAM_LORA_INFER = _pair("pi06_yam_vial_30fps_lora", **_LORA_RUN)
PI06_YAM_LORA_SFT, PI06_YAM_LORA_SFT_INFER = _pair(
    "pi06_yam_vial_30fps_lora_from_sft", init_params=SFT_PARAMS, **_LORA_RUN
)
PI06_YAM_LORA_SFT_RECAP, PI06_YAM_LORA_SFT_RECAP_INFER = _pair(
    "pi06_yam_vial_30fps_lora_from_sft_recap", init_params=SFT_PARAMS, repo_id=_RECAP_REPO, **_LORA_RUN
)
PI06_YAM_SFT_RECAP, PI06_YAM_SFT_RECAP_INFER = _pair(
    "pi06_yam_vial_30fps_from_sft_recap", init_params=SFT_PARAMS, repo_id=_RECAP_REPO
)

# Trossen Aloha data, as openpi's pi05_aloha: pi05_base fine-tuned with openpi's adapt_to_pi conversion
# (its `trossen` norm stats are of converted data); the task text comes from the data. Aloha's cameras
# are mapped with --cameras (README: base=observation.images.cam_high ...).
_ALOHA = {"adapt_to_pi": True, "repo_id": "local/aloha", "default_prompt": None}
PI06_ALOHA, PI06_ALOHA_INFER = _pair("pi06_aloha", **_ALOHA)
PI06_ALOHA_LORA, PI06_ALOHA_LORA_INFER = _pair("pi06_aloha_lora", **_ALOHA, **_LORA_RUN)

# Same structure at test size: 2-layer experts (widths 64 / 32), 28px cameras (4 tokens each),
# vocab 400 (the session-trained sentencepiece model), horizon 10, random init, no assets.
TINY_MODEL = pi05_config.Pi05Config(
    action_horizon=10,
    max_token_len=96,
    paligemma_variant="tiny",
    action_expert_variant="tiny_expert",
    siglip_variant="tiny",
    image_size=28,
    vocab_size=400,
)
_TINY_RUN = {"init_params": None, "assets_dir": "./assets", "num_workers": 0, "ema_decay": None}
PI06_TINY, PI06_TINY_INFER = _pair(
    "pi06_tiny", model=TINY_MODEL, repo_id="local/tiny", batch_size=2, num_train_steps=2, warmup_steps=1,
    decay_steps=10, log_interval=1, save_interval=1, keep_period=1, **_TINY_RUN,
)

# The simulated handover task (demo and closed-loop checks): the tiny model with room for the
# prompt plus 14 state tokens, and a schedule for a few hundred steps on CPU.
PI06_SIM, PI06_SIM_INFER = _pair(
    "pi06_sim", model=dataclasses.replace(TINY_MODEL, max_token_len=128), repo_id="local/sim_handover",
    batch_size=8, num_train_steps=300, peak_lr=5e-4, warmup_steps=20, decay_steps=1000, decay_lr=5e-5,
    log_interval=10, save_interval=100, keep_period=100, **_TINY_RUN,
)

# The simulated task at a size that learns it on CPU: 3-layer LLM and action expert, both 64 wide,
# a 3-block SigLIP on 56px cameras (16 tokens each), room for the prompt (up to ~100 tokens with the
# demo tokenizer, which splits the state's digits), float32 compute (bfloat16 is emulated on CPU:
# slower and coarser), no EMA, a few thousand steps.
SIM_SMALL_MODEL = dataclasses.replace(
    TINY_MODEL, max_token_len=112, paligemma_variant="small", action_expert_variant="small",
    siglip_variant="small", image_size=56, dtype="float32",
)
PI06_SIM_SMALL, PI06_SIM_SMALL_INFER = _pair(
    "pi06_sim_small", model=SIM_SMALL_MODEL, repo_id="local/sim_handover", batch_size=32, num_train_steps=3000,
    peak_lr=5e-4, warmup_steps=100, decay_steps=3000, decay_lr=5e-5, log_interval=100, save_interval=500,
    keep_period=500, **_TINY_RUN,
)

# Fine-tuning a pi06_sim_small checkpoint (the RECAP policy stage of `jobs.round --experiment`): the
# same model at a fifth of the SFT peak, decayed to a tenth of it over the fine-tune's 2,000 steps and
# EMA-averaged, so the checkpoint served is as settled as the SFT one it is compared with (the SFT
# schedule restarted at 5e-4 and ended at 1.7e-4 after 2,000 steps).
PI06_SIM_SMALL_FT, PI06_SIM_SMALL_FT_INFER = _pair(
    "pi06_sim_small_ft", model=SIM_SMALL_MODEL, repo_id="local/sim_handover", batch_size=32, num_train_steps=2000,
    peak_lr=1e-4, warmup_steps=50, decay_steps=2000, decay_lr=1e-5, log_interval=100, save_interval=500,
    keep_period=500, **{**_TINY_RUN, "ema_decay": 0.995},
)
