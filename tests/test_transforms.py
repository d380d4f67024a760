"""Policy transforms: YAM repack, Aloha cameras, resize-with-pad, quantile norm, padding, round trip."""

from __future__ import annotations

import numpy as np
import pytest

from recap_ray import transforms, trossen
from recap_ray.configs import policy, registry
from recap_ray.data.norm_stats import NormStats
from recap_ray.models import tokenizer

H = 4


def _stats(dim: int = 14) -> dict[str, NormStats]:
    q01, q99 = -np.arange(1, dim + 1, dtype=np.float32), np.arange(1, dim + 1, dtype=np.float32) * 2
    z = np.zeros(dim, np.float32)
    return {"state": NormStats(z, z + 1, q01, q99), "actions": NormStats(z, z + 1, q01 * 3, q99 * 3)}


def _yam_sample(rng: np.random.Generator) -> dict:
    return {
        "observation.images.head_camera": rng.uniform(0, 1, (3, 48, 64)).astype(np.float32),  # CHW float
        "observation.images.left_wrist_camera": rng.uniform(0, 1, (3, 48, 64)).astype(np.float32),
        "observation.state": rng.uniform(-1, 2, 14).astype(np.float32),
        "action": rng.uniform(-1, 2, (H, 14)).astype(np.float32),
        "adv_ind": "positive",
        "episode_index": 3,
    }


def test_repack_and_aloha_inputs():
    sample = _yam_sample(np.random.default_rng(0))
    out = transforms.AlohaInputs()(transforms.RepackYam()(sample))
    assert list(out["images"]) == ["base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"]
    base = out["images"]["base_0_rgb"]
    assert base.shape == (48, 64, 3) and base.dtype == np.uint8
    np.testing.assert_array_equal(base[5, 7], (255 * sample["observation.images.head_camera"][:, 5, 7]).astype(np.uint8))
    assert not out["images"]["right_wrist_0_rgb"].any()
    assert out["image_masks"] == {"base_0_rgb": True, "left_wrist_0_rgb": True, "right_wrist_0_rgb": False}
    assert out["adv_ind"] == "positive" and "episode_index" not in out
    with pytest.raises(ValueError, match="cam_high"):
        transforms.AlohaInputs()({"images": {"cam_left_wrist": base}, "state": np.zeros(14)})


def test_trossen_actions_round_trip_and_width_check():
    """adapt_to_pi: actions into pi0's space and back are the identity; only Aloha's 14 dims convert."""
    actions = np.random.default_rng(1).uniform(-1.5, 1.5, (5, 14)).astype(np.float32)
    np.testing.assert_allclose(trossen.actions_from_pi(trossen.actions_to_pi(actions)), actions, atol=1e-12)
    out = transforms.AlohaOutputs(adapt_to_pi=True)({"actions": np.pad(trossen.actions_to_pi(actions), ((0, 0), (0, 18)))})
    np.testing.assert_allclose(out["actions"], actions, atol=1e-12)
    sample = {"images": {"cam_high": np.zeros((3, 8, 8), np.uint8)}, "state": np.zeros(16, np.float32)}
    with pytest.raises(ValueError, match="adapt_to_pi: the state is 16 wide"):
        transforms.AlohaInputs(adapt_to_pi=True)(sample)


def test_a_config_without_default_prompt_names_the_missing_prompt(sentencepiece_model):
    """pi06_aloha takes its task text from the data: an observation without one is refused by name."""
    config = registry.get("pi06_aloha_infer")
    tok = tokenizer.PromptTokenizer(sentencepiece_model, config.model.max_token_len)
    pipeline = transforms.policy_inputs(config.model, _stats(), tok, default_prompt=config.default_prompt, repack=False,
                                        adapt_to_pi=config.adapt_to_pi)  # fmt: skip
    sample = {"images": {"cam_high": np.zeros((3, 8, 8), np.uint8)}, "state": np.full(14, 0.5, np.float32)}
    with pytest.raises(ValueError, match="no prompt: the observation has none and the policy config sets no default_prompt"):
        pipeline(sample)


def test_resize_with_pad():
    image = np.full((100, 50, 3), 200, np.uint8)
    out = transforms.ResizeImages(224)({"images": {"a": image}})["images"]["a"]
    # scale 224/100: 112 wide, pasted at x = 56
    assert out.shape == (224, 224, 3)
    assert not out[:, :56].any() and not out[:, 168:].any() and (out[:, 57:167] == 200).all()
    same = np.zeros((224, 224, 3), np.uint8)
    assert transforms.ResizeImages(224)({"images": {"a": same}})["images"]["a"] is same
    sliver = np.full((1, 300, 3), 90, np.uint8)  # scales to 0.75 px high: kept as one row, centred
    out = transforms.ResizeImages(224)({"images": {"a": sliver}})["images"]["a"]
    assert out.shape == (224, 224, 3) and (out[111] == 90).all() and out.sum() == 90 * 224 * 3


def test_quantile_normalization_by_hand():
    stats = {"state": NormStats(np.zeros(2), np.ones(2), np.array([0.0, -1.0]), np.array([2.0, 3.0]))}
    out = transforms.Normalize(stats)({"state": np.array([1.0, 3.0])})
    np.testing.assert_allclose(out["state"], [2 * 1 / (2 + 1e-6) - 1, 2 * 4 / (4 + 1e-6) - 1], rtol=1e-6)
    back = transforms.Unnormalize(stats)({"state": np.array([0.0, 1.0, 0.7])})  # dims past q01 pass through
    np.testing.assert_allclose(back["state"], [1.0 + 0.5e-6, 3.0 + 1e-6, 0.7], rtol=1e-6)


def test_delta_actions_and_padding():
    state = np.arange(14, dtype=np.float32)
    actions = np.ones((H, 14), np.float32) * 20
    out = transforms.DeltaActions()({"state": state, "actions": actions})
    np.testing.assert_array_equal(out["actions"][0, :7], [20, 19, 18, 17, 16, 15, 20])
    np.testing.assert_array_equal(out["actions"][0, 13], 20)
    padded = transforms.PadStatesAndActions(32)(out)
    assert padded["state"].shape == (32,) and padded["actions"].shape == (H, 32)
    assert not padded["actions"][:, 14:].any()


def test_model_inputs_keep_uint8_images_and_refuse_others():
    masks = {"base_0_rgb": True}
    out = transforms.ModelInputs()({"images": {"base_0_rgb": np.full((2, 2, 3), 7, np.uint8)}, "image_masks": masks})
    assert out["images"]["base_0_rgb"].dtype == np.uint8 and out["images"]["base_0_rgb"].max() == 7
    with pytest.raises(TypeError, match="base_0_rgb.*float32"):
        transforms.ModelInputs()({"images": {"base_0_rgb": np.zeros((2, 2, 3), np.float32)}, "image_masks": masks})


def test_training_and_serving_pipelines_round_trip(sentencepiece_model):
    config = policy.PI06_TINY
    tok = tokenizer.PromptTokenizer(sentencepiece_model, config.model.max_token_len)
    sample = _yam_sample(np.random.default_rng(1))
    train_in = transforms.policy_inputs(config.model, _stats(), tok, default_prompt=config.default_prompt,
                                        adv_ind_dropout=0.3, rng=np.random.default_rng(0))  # fmt: skip
    out = train_in(sample)
    assert set(out) == {"images", "image_masks", "tokenized_prompt", "tokenized_prompt_mask", "state", "actions"}
    assert out["images"]["base_0_rgb"].shape == (28, 28, 3) and out["images"]["base_0_rgb"].dtype == np.uint8
    assert out["images"]["base_0_rgb"].any() and not out["images"]["right_wrist_0_rgb"].any()  # unfed: black
    assert out["state"].shape == (32,) and out["actions"].shape == (H, 32)
    # the model would predict exactly the normalised delta actions: the output pipeline recovers the input
    back = transforms.policy_outputs(_stats())({"state": out["state"], "actions": out["actions"]})
    np.testing.assert_allclose(back["actions"], sample["action"], rtol=1e-4, atol=1e-4)
    # serving: no repack, Aloha keys straight from the client, adv_ind required
    serve_in = transforms.policy_inputs(config.model, _stats(), tok, default_prompt=config.default_prompt,
                                        repack=False)  # fmt: skip
    request = {"images": {"cam_high": np.zeros((3, 48, 64), np.float32)}, "state": np.zeros(14, np.float32)}
    with pytest.raises(ValueError, match="adv_ind is required"):
        serve_in(dict(request))
    assert serve_in({**request, "adv_ind": "positive"})["tokenized_prompt_mask"].any()
