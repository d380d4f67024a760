"""The served policy in-process: adv_ind forced positive, batching, CFG, loading and its errors."""

from __future__ import annotations

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recap_ray import transforms
from recap_ray.configs import registry
from recap_ray.data import norm_stats
from recap_ray.models import checkpoints, tokenizer, weights
from recap_ray.serve import policy, protocol
from recap_ray.sim import env as env_lib
from tests.serve.conftest import CONFIG

F32 = policy.PolicyOptions(fixed_noise=True, param_dtype="float32", max_batch_size=4)
# pi06_tiny_infer computing in float32, so the by-hand reference can be compared tightly
F32_CONFIG = dataclasses.replace(registry.get(CONFIG), model=dataclasses.replace(registry.get(CONFIG).model, dtype="float32"))


def _observations(n: int) -> list[dict]:
    environment = env_lib.HandoverEnv()
    out = []
    for seed in range(n):
        environment.reset(seed)
        out.append(environment.observation())
    return out


def _reference(run, obs: dict, cfg_beta: float | None = None, adv_ind: str = "positive", config=F32_CONFIG) -> np.ndarray:
    """Actions by hand: the checkpoint's weights, the training transforms with `adv_ind`, a plain
    Euler loop over full (uncached) velocity passes, the output transforms."""
    step = checkpoints.resolve(run)
    model = config.model.abstract_model()
    weights.load_into(model, checkpoints.params_dir(step))
    velocity = nnx.jit(lambda m, o, x, t: m.velocity(o, x, t))
    stats = norm_stats.load(checkpoints.norm_stats_file(step, config.asset_id))
    tok = tokenizer.PromptTokenizer(checkpoints.tokenizer_file(step), config.model.max_token_len)
    serve_in = transforms.policy_inputs(config.model, stats, tok, default_prompt=config.default_prompt, repack=False,
                                        adapt_to_pi=config.adapt_to_pi)  # fmt: skip
    cond = serve_in({**obs, "adv_ind": adv_ind})
    state = cond.pop("state")
    batch = jax.tree.map(lambda x: jnp.asarray(x)[None], cond)
    uncond = dict(batch)
    tokens, mask = tok.tokenize(obs["prompt"], state[:14], None)  # no advantage clause
    uncond["tokenized_prompt"], uncond["tokenized_prompt_mask"] = jnp.asarray(tokens)[None], jnp.asarray(mask)[None]
    shape = (config.model.action_horizon, config.model.action_dim)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape, np.float32))[None]
    for i in range(10):
        t = jnp.full((1,), 1.0 - i / 10, jnp.float32)
        v = velocity(model, batch, x, t)
        if cfg_beta is not None:
            v_u = velocity(model, uncond, x, t)
            v = v_u + cfg_beta * (v - v_u)
        x = x - 0.1 * v
    return transforms.policy_outputs(stats, adapt_to_pi=config.adapt_to_pi)({"state": state, "actions": np.asarray(x[0])})["actions"]


@pytest.fixture(scope="module")
def f32_policy(policy_run) -> policy.Policy:
    return policy.Policy.load(policy_run, F32_CONFIG, options=F32)


def test_adv_ind_is_positive_whatever_the_client_sends(policy_run, f32_policy):
    obs = _observations(1)[0]
    expected = _reference(policy_run, obs)
    assert np.abs(expected - _reference(policy_run, obs, adv_ind="negative")).max() > 1e-2  # the clause matters
    for variant in (obs, {**obs, "adv_ind": "negative"}, {**obs, "adv_ind": "none"}, {**obs, "adv_ind": None}):
        answer = f32_policy.infer(variant)
        assert answer["actions"].shape == (10, 14) and answer["actions"].dtype == np.float32
        np.testing.assert_allclose(answer["actions"], expected, rtol=1e-4, atol=2e-4)
        assert answer["policy_timing"]["infer_ms"] > 0 and answer["policy_timing"]["prepare_ms"] > 0
    prepared = f32_policy.prepare({**obs, "adv_ind": "negative"})["cond"]
    tok = tokenizer.PromptTokenizer(checkpoints.tokenizer_file(checkpoints.resolve(policy_run)), 96)
    assert "Advantage: positive;" in tok.decode(prepared["tokenized_prompt"])


def test_cfg_mixes_conditioned_and_plain_prompt_velocities(policy_run):
    obs = _observations(1)[0]
    guided = policy.Policy.load(policy_run, F32_CONFIG, options=policy.PolicyOptions(
        fixed_noise=True, param_dtype="float32", cfg_beta=2.5, max_batch_size=2))
    got = guided.infer({**obs, "adv_ind": "negative"})["actions"]
    np.testing.assert_allclose(got, _reference(policy_run, obs, cfg_beta=2.5), rtol=1e-4, atol=2e-4)
    assert np.abs(got - _reference(policy_run, obs)).max() > 1e-2  # guidance changes the answer
    assert guided.metadata["cfg_beta"] == 2.5


def test_batched_answers_equal_one_at_a_time(local_policy):
    observations = _observations(3)
    singles = [local_policy.infer(o) for o in observations]
    batched = local_policy.infer_batch(observations)
    assert [b["policy_timing"]["batch_size"] for b in batched] == [3, 3, 3]
    for s, b in zip(singles, batched, strict=True):
        assert s["policy_timing"]["batch_size"] == 1
        np.testing.assert_array_equal(s["actions"], b["actions"])
    # more than max_batch_size (4): split into model calls of at most 4
    many = local_policy.infer_batch(observations * 2)
    assert [m["policy_timing"]["batch_size"] for m in many] == [4] * 4 + [2] * 2
    np.testing.assert_array_equal(many[4]["actions"], singles[1]["actions"])


def test_random_noise_differs_between_requests(policy_run):
    obs = _observations(1)[0]
    sampler = policy.Policy.load(policy_run, CONFIG, options=policy.PolicyOptions(seed=1, max_batch_size=2))
    a, b = sampler.infer(obs)["actions"], sampler.infer(obs)["actions"]
    assert not np.allclose(a, b)


def test_isolated_errors_leave_the_rest_of_the_batch(local_policy):
    good = _observations(2)
    bad = {**good[0], "state": np.zeros(5, np.float32)}
    answers = local_policy.infer_batch([good[0], bad, good[1]], isolate_errors=True)
    assert isinstance(answers[1], protocol.InvalidRequest) and "'state': expected shape (14,)" in str(answers[1])
    np.testing.assert_array_equal(answers[0]["actions"], local_policy.infer(good[0])["actions"])
    assert answers[2]["policy_timing"]["batch_size"] == 2
    with pytest.raises(protocol.InvalidRequest):
        local_policy.infer_batch([good[0], bad])


def test_an_observation_whose_actions_overflow_is_refused_alone(local_policy):
    good = _observations(2)
    huge = {**good[0], "state": np.full(14, 3e38, np.float32)}  # finite, but overflows float32 once normalized
    with np.errstate(over="ignore", invalid="ignore"):
        answers = local_policy.infer_batch([good[0], huge, good[1]], isolate_errors=True)
        assert isinstance(answers[1], protocol.InvalidRequest)
        assert "not finite" in str(answers[1]) and "'state' spans [3e+38, 3e+38]" in str(answers[1])
        np.testing.assert_array_equal(answers[0]["actions"], local_policy.infer(good[0])["actions"])
        assert np.all(np.isfinite(answers[2]["actions"]))
        with pytest.raises(protocol.InvalidRequest, match="not finite"):
            local_policy.infer(huge)


def test_metadata(local_policy):
    meta = local_policy.metadata
    assert meta["adv_ind"] == "positive" and meta["config"] == CONFIG and meta["action_horizon"] == 10
    assert meta["observation"]["state_dim"] == 14 and meta["checkpoint"].endswith("checkpoints/2")


def test_actions_wider_than_the_state_are_answered_whole(policy_run, f32_policy):
    """A robot whose actions carry more than its state (mobile Aloha: 14 joints + 2 base velocities) gets every
    trained action dim back; the joint dims are those of the 14-wide policy."""
    step = checkpoints.resolve(policy_run)
    stats = dict(norm_stats.load(checkpoints.norm_stats_file(step, F32_CONFIG.asset_id)))
    a = stats["actions"]
    stats["actions"] = norm_stats.NormStats(*(np.concatenate([x, x[:2]]) for x in (a.mean, a.std, a.q01, a.q99)))
    model = F32_CONFIG.model.abstract_model()
    weights.load_into(model, checkpoints.params_dir(step))
    tok = tokenizer.PromptTokenizer(checkpoints.tokenizer_file(step), F32_CONFIG.model.max_token_len)
    wide = policy.Policy(F32_CONFIG, model, stats, tok, F32)
    obs = _observations(1)[0]
    answer = wide.infer(obs)["actions"]
    assert answer.shape == (10, 16) and wide.metadata["action_dim"] == 16 and wide.spec.state_dim == 14
    np.testing.assert_allclose(answer[:, :14], f32_policy.infer(obs)["actions"], rtol=1e-5, atol=1e-5)


def test_a_trossen_config_serves_through_the_conversion(policy_run, f32_policy):
    """adapt_to_pi (pi06_aloha): the served answer is the model's chunk mapped back to Aloha's joint space."""
    config = dataclasses.replace(F32_CONFIG, adapt_to_pi=True)
    served = policy.Policy.load(policy_run, config, options=F32)
    obs = _observations(1)[0]
    answer = served.infer(obs)["actions"]
    np.testing.assert_allclose(answer, _reference(policy_run, obs, config=config), rtol=1e-4, atol=1e-4)
    assert np.abs(answer - f32_policy.infer(obs)["actions"]).max() > 1e-2  # the conversion took part


def test_load_errors(policy_run, tmp_path):
    with pytest.raises(ValueError, match="serve its inference twin 'pi06_tiny_infer'"):
        policy.Policy.load(policy_run, "pi06_tiny")
    with pytest.raises(registry.UnknownConfig, match="unknown config"):
        policy.Policy.load(policy_run, "pi06_tiny_infr")
    step = tmp_path / "7"
    shutil.copytree(checkpoints.resolve(policy_run), step)
    checkpoints.tokenizer_file(step).unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer at .*--tokenizer"):
        policy.Policy.load(step, CONFIG)
    tok = checkpoints.tokenizer_file(checkpoints.resolve(policy_run))
    assert policy.Policy.load(step, CONFIG, tokenizer_path=tok).metadata["checkpoint"] == str(step)
