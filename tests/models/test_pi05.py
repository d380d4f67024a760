"""pi0.5 model: real-size trees against the spec, flow matching and sampling against slow loops."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from recap_ray.configs import policy
from recap_ray.models import pi05, pi05_config, siglip

import spec_tree

@pytest.mark.parametrize(
    ("config", "tsv"),
    [(policy.PI06_YAM, "pi05.tsv"), (policy.PI06_YAM_LORA_INFER, "pi05_lora.tsv")],
    ids=["pi05", "pi05_lora"],
)
def test_real_size_tree_matches_spec(config, tsv):
    got, want = spec_tree.tree_rows(config.abstract_params()), spec_tree.rows(tsv)
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    for path in want:
        assert got[path] == want[path], path


def test_real_size_parameter_count():
    flat = traverse_util.flatten_dict(policy.PI06_YAM.abstract_params())
    assert sum(int(np.prod(v.shape)) for v in flat.values()) == 3_353_433_872


# --- tiny model, float32 compute so a slow reference can be compared tightly -----------------

CONFIG = dataclasses.replace(policy.TINY_MODEL, dtype="float32", max_token_len=12, action_horizon=6)
B = 2


def _rngs(seed: int) -> nnx.Rngs:
    """Cheap-to-compile keys for tests (XLA's RngBitGenerator instead of threefry)."""
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _obs(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    s = CONFIG.image_size
    valid = np.arange(CONFIG.max_token_len)[None] < np.array([[7], [12]])
    return {
        "images": {k: jnp.asarray(rng.uniform(-1, 1, (B, s, s, 3)), jnp.float32) for k in CONFIG.image_keys},
        "image_masks": {k: jnp.asarray([True, k != "right_wrist_0_rgb"]) for k in CONFIG.image_keys},
        "tokenized_prompt": jnp.asarray(rng.integers(0, CONFIG.vocab_size, (B, CONFIG.max_token_len)), jnp.int32),
        "tokenized_prompt_mask": jnp.asarray(valid),
    }


@pytest.fixture(scope="module")
def model():
    m = CONFIG.create(_rngs(0))
    # adaRMS Dense layers and the SigLIP head start at zero; randomise them so every path is exercised
    state = nnx.state(m, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(5), 1000))
    nnx.update(m, jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape, x.dtype), state))
    return m


@pytest.fixture(scope="module")
def velocity(model):
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda st, obs, x, t: nnx.merge(graphdef, st).velocity(obs, x, t))
    return lambda obs, x, t: fn(state, obs, x, t)


def _slice(obs: dict, i: int) -> dict:
    return jax.tree.map(lambda a: a[i : i + 1], obs)


def test_loss_matches_per_sample_loop(model, velocity):
    obs = _obs()
    rng = np.random.default_rng(1)
    actions = jnp.asarray(rng.normal(size=(B, CONFIG.action_horizon, CONFIG.action_dim)), jnp.float32)
    noise = jnp.asarray(rng.normal(size=actions.shape), jnp.float32)
    t = jnp.asarray([0.2, 0.9], jnp.float32)
    got = float(nnx.jit(lambda m, o, a, n, tt: m.loss(o, a, n, tt))(model, obs, actions, noise, t))
    total = 0.0
    for i in range(B):
        ti = float(t[i])
        x_t = ti * noise[i : i + 1] + (1.0 - ti) * actions[i : i + 1]
        v = np.asarray(velocity(_slice(obs, i), x_t, t[i : i + 1]))
        mse = np.mean((v - np.asarray(noise[i] - actions[i])) ** 2)
        total += mse * 0.5 * np.exp(-0.5 * (1.0 - ti))  # pistar weighting
    np.testing.assert_allclose(got, total / B, rtol=1e-4)


def test_sampling_with_kv_cache_matches_uncached_euler_loop(model, velocity):
    obs = _obs(2)
    noise = jax.random.normal(jax.random.key(3), (B, CONFIG.action_horizon, CONFIG.action_dim))
    got = nnx.jit(lambda m, o, n: m.sample_actions(jax.random.key(0), o, noise=n))(model, obs, noise)
    x = np.asarray(noise)
    for step in range(10):  # t = 1.0, 0.9, ..., 0.1; dt = -0.1
        t = 1.0 - step / 10
        x = x - 0.1 * np.asarray(velocity(obs, jnp.asarray(x), jnp.full((B,), t, jnp.float32)))
    np.testing.assert_allclose(np.asarray(got), x, rtol=1e-4, atol=1e-4)


def test_uint8_images_are_mapped_on_the_device_as_openpi_maps_them(model, velocity):
    """The loaders send uint8; the model's results equal those of openpi's host mapping x / 255 * 2 - 1 (float32),
    in the training loss (mapped before the augmentation) and in the velocity that sampling integrates."""
    obs = _obs(4)
    rng = np.random.default_rng(4)
    uint8 = {k: rng.integers(0, 256, v.shape, dtype=np.uint8) for k, v in obs["images"].items()}
    floats = {k: v.astype(np.float32) / 255.0 * 2.0 - 1.0 for k, v in uint8.items()}
    actions = jnp.asarray(rng.normal(size=(B, CONFIG.action_horizon, CONFIG.action_dim)), jnp.float32)
    loss = nnx.jit(lambda m, o: m.compute_loss(jax.random.key(9), o, actions, train=True))
    t = jnp.asarray([0.3, 0.8], jnp.float32)
    for fn in (lambda o: loss(model, o), lambda o: velocity(o, actions, t)):
        got, want = fn({**obs, "images": uint8}), fn({**obs, "images": floats})
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_masked_inputs_do_not_leak(velocity):
    obs = _obs(4)
    x = jax.random.normal(jax.random.key(1), (B, CONFIG.action_horizon, CONFIG.action_dim))
    t = jnp.asarray([0.5, 0.5])
    base = np.asarray(velocity(obs, x, t))
    changed = dict(obs)
    # sample 1's right wrist camera is masked, sample 0's prompt is padded after 7 tokens
    changed["images"] = {**obs["images"], "right_wrist_0_rgb": obs["images"]["right_wrist_0_rgb"].at[1].set(0.3)}
    changed["tokenized_prompt"] = obs["tokenized_prompt"].at[0, 7:].set(1)
    np.testing.assert_allclose(np.asarray(velocity(changed, x, t)), base, rtol=1e-5, atol=1e-6)
    # and a visible input does matter
    seen = dict(obs, tokenized_prompt=obs["tokenized_prompt"].at[0, 3].add(1))
    assert not np.allclose(np.asarray(velocity(seen, x, t))[0], base[0])


def test_time_conditioning_and_attn_mask():
    emb = np.asarray(pi05.posemb_sincos(jnp.asarray([0.25]), 8, 4e-3, 4.0))
    periods = 4e-3 * 1000.0 ** (np.arange(4) / 3)
    want = np.concatenate([np.sin(2 * np.pi * 0.25 / periods), np.cos(2 * np.pi * 0.25 / periods)])
    np.testing.assert_allclose(emb[0], want, atol=5e-5)
    mask = np.asarray(pi05.make_attn_mask(jnp.asarray([[1, 1, 0, 1, 1]], bool), jnp.asarray([0, 0, 0, 1, 0], bool)))
    want = np.array([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 0, 1, 1], [1, 1, 0, 1, 1]], bool)
    np.testing.assert_array_equal(mask[0], want)


def test_bf16_tiny_runs_and_real_config_facts():
    config = policy.PI06_TINY.model
    m = config.create(_rngs(0))
    obs = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), config.fake_inputs(1)[0])
    prefix, _, _ = m.embed_prefix(obs)
    assert prefix.dtype == jnp.bfloat16
    assert policy.PI06_YAM.model.prefix_len + policy.PI06_YAM.model.action_horizon == 1021
    assert isinstance(m, pi05.Pi05) and isinstance(config, pi05_config.Pi05Config)


def _remat_policies(jaxpr) -> list:
    """The `policy` of every rematerialised call in `jaxpr` and the jaxprs nested in it."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name.startswith("remat"):  # jax.checkpoint's primitive (remat2 in JAX 0.10)
            found.append(eqn.params["policy"])
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
                    found += _remat_policies(getattr(sub, "jaxpr", sub))
    return found


def test_remat_policy_reaches_both_stacks_and_changes_no_gradient(model):
    rng = np.random.default_rng(3)
    actions = jnp.asarray(rng.standard_normal((B, CONFIG.action_horizon, CONFIG.action_dim)), jnp.float32)
    noise = jnp.asarray(rng.standard_normal(actions.shape), jnp.float32)
    t = jnp.asarray([0.3, 0.8], jnp.float32)
    params = nnx.state(model, nnx.Param)
    grads = {}
    for remat in ("nothing_saveable", "dots_with_no_batch_dims_saveable", "none"):
        graphdef = nnx.graphdef(dataclasses.replace(CONFIG, remat=remat).create(_rngs(0)))

        def loss(p, graphdef=graphdef):
            return nnx.merge(graphdef, p).loss(_obs(), actions, noise, t).mean()

        jaxpr = jax.make_jaxpr(loss)(params).jaxpr
        calls = len(CONFIG.image_keys) + 1  # SigLIP once per camera, the Gemma stack once
        want = [] if remat == "none" else [getattr(jax.checkpoint_policies, remat)] * calls
        assert _remat_policies(jaxpr) == want, remat
        grads[remat] = jax.jit(jax.grad(loss))(params)
    for remat in ("dots_with_no_batch_dims_saveable", "none"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads[remat], grads["nothing_saveable"])
    for make in (lambda: dataclasses.replace(CONFIG, remat="dots"), lambda: siglip.SiglipConfig.tiny(remat="dots")):
        with pytest.raises(ValueError, match="unknown remat policy 'dots'.*nothing_saveable"):
            make()
