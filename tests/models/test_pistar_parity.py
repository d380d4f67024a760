"""Numerical parity with pistar-world's own value-model code (fixture made by tests/interop/make_pistar_fixture.py).

The fixture holds a tiny value checkpoint written by pistar's `scripts/train_value.py::save_checkpoint`
(`params` + `ema_params`, orbax), the inputs, and what pistar's `ValueModel` computed from them: C51
logits, V (`compute_value`) and the training loss (`compute_loss`, scalar and distribution targets), in
float32 and with pistar's default bfloat16 SigLIP. Also pistar's prompt tokenization
(`GemmaValueTokenizer`) with the sentencepiece model stored there, and its image preprocessing
(`resize_with_pad` + uint8 -> [-1, 1]). Here everything goes through our real loader and model; no
upstream code is needed. See `meta.json` for versions and sizes.

Tolerances. float32: pistar and we run the same math in float32 on CPU but with different op orders
(einsum layouts, scanned vs unrolled, linen vs nnx, fused softmax). The observed max |difference| is
5.4e-7 on logits up to 2.1; 1e-4 absolute leaves headroom across XLA versions and
still catches any semantic slip (a wrong window, RoPE base, norm, scale or mask moves logits by >1e-3).
bfloat16 SigLIP (pistar's default dtype): 3e-3 on logits and 5e-5 on V (observed 1.6e-3 and 1.7e-5, one
rounding flip apart across XLA versions). Both bounds sit below the 6e-3 / 1.3e-4 between pistar's own bfloat16
and float32 outputs, so a tower that kept its attention logits and softmax in float32 (as ours did, where
pistar's linen attention computes them in bfloat16) fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from recap_ray.configs import value as value_configs
from recap_ray.models import c51, gemma3, siglip, value_preprocess, value_tokenizer, value_weights
from recap_ray.models.value_config import ValueModelConfig

FIXTURE = Path(__file__).parent / "fixtures" / "pistar_value"
F32_ATOL = 1e-4
BF16_LOGIT_ATOL = 3e-3
BF16_VALUE_ATOL = 5e-5


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((FIXTURE / "meta.json").read_text())


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "inputs.npz") as f:
        return dict(f)


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "outputs.npz") as f:
        return dict(f)


def parity_config(meta: dict, siglip_dtype: str = "float32") -> ValueModelConfig:
    """Our config for the fixture's pistar model (sizes from meta.json)."""
    s, g = meta["siglip"], meta["gemma"]
    types = g["attention_types"]
    global_layers = [i for i, t in enumerate(types) if t == "GLOBAL"]
    llm = gemma3.Gemma3Config(
        width=g["embed_dim"], depth=g["num_layers"], mlp_dim=g["hidden_dim"], num_heads=g["num_heads"],
        num_kv_heads=g["num_kv_heads"], head_dim=g["head_dim"], vocab_size=g["num_embed"],
        sliding_window=g["sliding_window_size"], global_every=global_layers[0] + 1,
        local_rope_base=float(g["local_base_frequency"]), global_rope_base=float(g["global_base_frequency"]),
    )  # fmt: skip
    # Our layout must reproduce pistar's layer types exactly (5 local, 1 global, ...).
    assert [llm.is_global(i) for i in range(llm.depth)] == [t == "GLOBAL" for t in types]
    assert g["query_pre_attn_scalar"] == pytest.approx(g["head_dim"] ** -0.5)
    assert g["use_qk_norm"] and g["final_logit_softcap"] is None and g["attn_logits_soft_cap"] is None
    tower = siglip.SiglipConfig(
        width=s["width"], depth=s["depth"], mlp_dim=s["mlp_dim"], num_heads=s["num_heads"],
        patch_size=s["patch_size"], image_size=s["image_size"], dtype=siglip_dtype,
    )  # fmt: skip
    return ValueModelConfig(
        name="pistar_parity", siglip=tower, llm=llm, cross_attention_heads=meta["cross_attention_heads"],
        max_token_len=meta["max_token_len"], cameras=tuple(meta["cameras"]), init_weights=None,
    )  # fmt: skip


@nnx.jit
def forward(model, images, image_masks, tokens, token_mask, targets, target_dist):
    """logits, V, loss (scalar targets), loss (distribution targets), through the model's own methods."""
    args = (images, image_masks, tokens, token_mask)
    return model(*args), model.value(*args), model.loss(*args, targets), model.loss(*args, target_dist)


def model_inputs(meta: dict, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    cams = meta["cameras"]
    images = np.stack([inputs[f"image_{c}"] for c in cams], axis=1)  # (B, C, S, S, 3) uint8
    masks = np.stack([inputs[f"mask_{c}"] for c in cams], axis=1)
    return images, masks, inputs["tokens"], inputs["token_mask"]  # uint8: the model maps it as pistar's from_dict


@pytest.mark.parametrize("use_ema", [True, False], ids=["ema_params", "params"])
def test_float32_logits_value_loss_match_pistar(meta, inputs, expected, use_ema):
    config = parity_config(meta)
    model = value_weights.load_model(config, checkpoint=FIXTURE / "checkpoint", use_ema=use_ema)
    _, step = value_weights.load_checkpoint(FIXTURE / "checkpoint", use_ema=use_ema)
    assert step == meta["step"]
    key = "ema" if use_ema else "params"
    got = forward(model, *model_inputs(meta, inputs), inputs["targets"], inputs["target_dist"])
    for name, ours in zip(("logits", "value", "loss", "loss_dist"), got, strict=True):
        np.testing.assert_allclose(np.asarray(ours), expected[f"{key}_{name}"], rtol=0, atol=F32_ATOL, err_msg=name)


def test_bfloat16_siglip_matches_pistar_default_dtype(meta, inputs, expected):
    """pistar's ValueModelConfig default dtype runs the SigLIP tower in bfloat16 (bounds: module docstring)."""
    model = value_weights.load_model(parity_config(meta, "bfloat16"), checkpoint=FIXTURE / "checkpoint")
    logits, v, _, _ = forward(model, *model_inputs(meta, inputs), inputs["targets"], inputs["target_dist"])
    np.testing.assert_allclose(np.asarray(logits), expected["ema_bf16_logits"], rtol=0, atol=BF16_LOGIT_ATOL)
    np.testing.assert_allclose(np.asarray(v), expected["ema_bf16_value"], rtol=0, atol=BF16_VALUE_ATOL)


def test_c51_support_and_two_hot_match_pistar(inputs, expected):
    np.testing.assert_allclose(np.asarray(c51.support()), expected["supports"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(np.asarray(c51.two_hot(inputs["targets"])), expected["twohot"], rtol=0, atol=1e-6)


def test_prompt_tokens_match_pistar(meta, inputs):
    tok = value_tokenizer.ValueTokenizer(FIXTURE / "tokenizer.model", max_len=meta["max_token_len"])
    tokens, masks = tok(meta["tokenizer_prompts"])
    np.testing.assert_array_equal(tokens, inputs["prompt_tokens"])
    np.testing.assert_array_equal(masks, inputs["prompt_masks"])
    tokens, masks = tok(meta["model_prompts"])
    np.testing.assert_array_equal(tokens, inputs["tokens"])
    np.testing.assert_array_equal(masks, inputs["token_mask"])
    assert inputs["prompt_masks"].all(axis=1).any(), "fixture should include a truncated prompt"


@pytest.mark.parametrize("name", ["wide", "tall"])
def test_resize_with_pad_matches_pistar(inputs, name):
    size = 224
    ours = value_preprocess.resize_with_pad(inputs[f"pre_{name}_in"], size, size)
    np.testing.assert_array_equal(ours, inputs[f"pre_{name}_resized"])


def test_uint8_scaling_matches_pistar(inputs):
    ours = np.asarray(jax.jit(siglip.pixels)(inputs["pre_levels_in"]))  # on the device, in the jitted model
    assert ours.dtype == inputs["pre_levels_float"].dtype
    np.testing.assert_array_equal(ours, inputs["pre_levels_float"])


def test_real_value_config_matches_pistar_sizes(meta):
    """Our full-size `value` config against the sizes pistar's code builds (Gemma3_270M.config, So400m/14)."""
    real, ours = meta["real"], value_configs.VALUE
    g, llm = real["gemma3_270m"], ours.llm
    assert (llm.vocab_size, llm.width, llm.mlp_dim) == (g["num_embed"], g["embed_dim"], g["hidden_dim"])
    assert (llm.num_heads, llm.head_dim, llm.num_kv_heads) == (g["num_heads"], g["head_dim"], g["num_kv_heads"])
    assert llm.sliding_window == g["sliding_window_size"]
    assert [llm.is_global(i) for i in range(llm.depth)] == [t == "GLOBAL" for t in g["attention_types"]]
    assert (llm.local_rope_base, llm.global_rope_base) == (g["local_base_frequency"], g["global_base_frequency"])
    assert g["local_scale_factor"] == g["global_scale_factor"] == 1.0  # no RoPE scaling to implement
    assert g["query_pre_attn_scalar"] == pytest.approx(llm.head_dim**-0.5)
    assert g["use_qk_norm"] and g["use_post_attn_norm"] and g["use_post_ffw_norm"]
    assert g["final_logit_softcap"] is None and g["attn_logits_soft_cap"] is None
    s, tower = real["siglip"], ours.siglip
    assert (tower.width, tower.depth, tower.mlp_dim, tower.num_heads) == (
        s["width"], s["depth"], s["mlp_dim"], s["num_heads"]
    )
    assert (tower.patch_size, tower.image_size) == (s["patch_size"], real["image_resolution"][0])
    assert tower.dtype == real["dtype"]
    assert ours.max_token_len == real["max_token_len"]
    assert ours.cross_attention_heads == meta["cross_attention_heads"]
    assert (ours.num_atoms, ours.v_min, ours.v_max) == (real["num_atoms"], real["v_min"], real["v_max"])
