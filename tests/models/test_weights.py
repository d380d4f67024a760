"""openpi params/ checkpoints: load, strict key checks, LoRA fill-in, save in openpi's layout."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx, traverse_util

from recap_ray.configs import policy
from recap_ray.models import weights

CONFIG = dataclasses.replace(policy.TINY_MODEL, max_token_len=8, action_horizon=4)
LORA_CONFIG = dataclasses.replace(CONFIG, paligemma_variant="tiny_lora", action_expert_variant="tiny_expert_lora")


def _openpi_style_checkpoint(path, params: dict, *, value_suffix: bool) -> None:
    """Write {'params': tree} with orbax directly, the way openpi's training (or its release) does."""
    flat = traverse_util.flatten_dict(params)
    if value_suffix:
        flat = {(*k, "value"): v for k, v in flat.items()}
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(str(path), {"params": traverse_util.unflatten_dict(jax.tree.map(np.asarray, flat))})


def _rngs(seed: int) -> nnx.Rngs:
    """Cheap-to-compile keys for tests (XLA's RngBitGenerator instead of threefry)."""
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _obs() -> dict:
    obs, _ = CONFIG.fake_inputs(1)
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(rng.uniform(-1, 1, s.shape) if s.dtype == jnp.float32
                                              else np.ones(s.shape), s.dtype), obs)  # fmt: skip


@pytest.fixture(scope="module")
def source():
    """A model with other weights than the one we load into, and its sampled actions."""
    model = CONFIG.create(_rngs(7))
    return model, weights.model_params(model)


@pytest.fixture(scope="module")
def sample():
    noise = jax.random.normal(jax.random.key(1), (1, CONFIG.action_horizon, CONFIG.action_dim))
    graphdef = nnx.graphdef(CONFIG.create(_rngs(0)))
    fn = jax.jit(lambda st, obs: nnx.merge(graphdef, st).sample_actions(jax.random.key(0), obs, noise=noise))
    return lambda model: np.asarray(fn(nnx.state(model), _obs()))


@pytest.mark.parametrize("value_suffix", [True, False], ids=["train_layout", "release_layout"])
def test_openpi_checkpoint_loads_with_identical_outputs(tmp_path, source, sample, value_suffix):
    model_src, params = source
    _openpi_style_checkpoint(tmp_path / "5" / "params", params, value_suffix=value_suffix)
    model = CONFIG.create(_rngs(0))
    assert not np.array_equal(sample(model), sample(model_src))
    weights.load_into(model, tmp_path / "5" / "params")
    for path, value in weights.flatten(weights.model_params(model)).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(weights.flatten(params)[path]), err_msg=path)
    np.testing.assert_array_equal(sample(model), sample(model_src))


def test_save_writes_openpi_layout_and_round_trips(tmp_path, source):
    model_src, params = source
    path = tmp_path / "3" / "params"  # openpi's <checkpoint_dir>/<step>/params
    weights.save(path, model_src)
    with ocp.PyTreeCheckpointer() as ckptr:
        raw = ckptr.restore(path)
    flat = traverse_util.flatten_dict(raw)
    assert all(k[0] == "params" and k[-1] == "value" for k in flat)
    assert {"/".join(k[1:-1]) for k in flat} == set(weights.flatten(params))
    back = weights.restore(path)
    for p, v in weights.flatten(params).items():
        np.testing.assert_array_equal(weights.flatten(back)[p], np.asarray(v))
    assert {v.dtype for v in weights.flatten(weights.restore(path, dtype=jnp.bfloat16)).values()} == {jnp.dtype(jnp.bfloat16)}


def test_mismatches_are_listed(tmp_path, source):
    _, params = source
    flat = dict(weights.flatten(params))
    del flat["time_mlp_in/bias"]
    flat["PaliGemma/llm/bogus/w"] = np.zeros(3, np.float32)
    flat["action_out_proj/kernel"] = np.zeros((5, 32), np.float32)
    _openpi_style_checkpoint(tmp_path / "bad", weights.unflatten(flat), value_suffix=True)
    with pytest.raises(weights.CheckpointMismatch) as err:
        weights.load_into(CONFIG.create(_rngs(0)), tmp_path / "bad")
    assert err.value.missing == ["time_mlp_in/bias"]
    assert err.value.extra == ["PaliGemma/llm/bogus/w"]
    assert err.value.misshaped == ["action_out_proj/kernel: (5, 32) vs (32, 32)"]
    for text in ("time_mlp_in/bias", "PaliGemma/llm/bogus/w", "action_out_proj/kernel"):
        assert text in str(err.value)


def test_lora_config_loads_full_weights_and_keeps_lora_init(tmp_path, source):
    _, params = source
    _openpi_style_checkpoint(tmp_path / "full", params, value_suffix=True)
    model = LORA_CONFIG.create(_rngs(0))
    weights.load_into(model, tmp_path / "full")
    got = weights.flatten(weights.model_params(model))
    lora_leaves = weights.lora_paths(weights.model_params(model))
    assert len(lora_leaves) == 20 and set(got) - set(weights.flatten(params)) == set(lora_leaves)
    for p, v in weights.flatten(params).items():
        np.testing.assert_array_equal(np.asarray(got[p]), np.asarray(v), err_msg=p)
    values = np.concatenate([np.asarray(got[p]).ravel() for p in lora_leaves])
    assert abs(values.std() - 0.01) < 1e-3 and abs(values.mean()) < 1e-3  # openpi: N(0, 0.01^2) for a and b
    # a LoRA checkpoint into the plain config: its LoRA leaves are extra and named
    weights.save(tmp_path / "lora", model)
    with pytest.raises(weights.CheckpointMismatch, match="lora_a"):
        weights.load_into(CONFIG.create(_rngs(0)), tmp_path / "lora")


def test_fit_reads_metadata_only_and_restore_leaves_reads_what_is_named(tmp_path, source):
    """`fit` checks a checkpoint against the model from its metadata alone (it works with the array data gone);
    `restore_leaves` reads just the named leaves, cast to each target's dtype."""
    _, params = source
    _openpi_style_checkpoint(tmp_path / "ckpt", params, value_suffix=False)
    reference = weights.model_params(nnx.eval_shape(lambda: LORA_CONFIG.create(_rngs(0))))
    lora_leaves = set(weights.lora_paths(reference))
    targets = weights.fit(reference, tmp_path / "ckpt")
    assert set(targets) == set(weights.flatten(reference)) - lora_leaves == set(weights.flatten(params))

    named = {"action_out_proj/kernel": jax.ShapeDtypeStruct((32, 32), jnp.bfloat16), "time_mlp_in/bias": targets["time_mlp_in/bias"]}
    got = weights.restore_leaves(tmp_path / "ckpt", named)
    assert set(got) == set(named) and got["action_out_proj/kernel"].dtype == jnp.bfloat16
    for p, t in named.items():
        np.testing.assert_array_equal(got[p], np.asarray(weights.flatten(params)[p]).astype(t.dtype), err_msg=p)
    with pytest.raises(KeyError, match="no such leaves in the checkpoint: \\['bogus/w'\\]"):
        weights.restore_leaves(tmp_path / "ckpt", {"bogus/w": jax.ShapeDtypeStruct((1,), jnp.float32)})

    for data in (tmp_path / "ckpt").glob("ocdbt.process_*"):  # the arrays' bytes: gone
        for f in data.rglob("*"):
            if f.is_file():
                f.unlink()
    assert weights.fit(reference, tmp_path / "ckpt") == targets
    with pytest.raises(OSError, match=f"{tmp_path / 'ckpt'}: cannot read its arrays"):  # fit passes, the read names the checkpoint
        weights.restore_leaves(tmp_path / "ckpt", named)
    bigger = weights.unflatten({**weights.flatten(reference), "extra/w": jax.ShapeDtypeStruct((2,), jnp.float32)})
    with pytest.raises(weights.CheckpointMismatch) as err:
        weights.fit(bigger, tmp_path / "ckpt")
    assert err.value.missing == ["extra/w"] and not err.value.extra and not err.value.misshaped


def test_reading_names_the_checkpoint_for_storage_errors_only():
    """tensorstore's innermost status decides: a storage failure becomes an OSError naming the checkpoint; anything
    else (a tree that does not fit, a bug) passes unchanged."""
    def failing(inner: Exception) -> None:
        try:
            raise inner
        except Exception as err:
            raise Exception("Encountered error while reading array index: ... TensorStore({...})") from err

    with pytest.raises(OSError, match=r"^/ckpt: cannot read its arrays \(damaged, or copied in part\?\): DATA_LOSS: Error reading \"a.b\"$"):
        with weights.reading("/ckpt"):
            failing(ValueError('DATA_LOSS: Error reading "a.b"\nmore detail'))
    with pytest.raises(Exception, match="^Encountered error") as err:
        with weights.reading("/ckpt"):
            failing(ValueError("INVALID_ARGUMENT: shape mismatch"))
    assert not isinstance(err.value, OSError)
    with pytest.raises(KeyError):
        with weights.reading("/ckpt"):
            raise KeyError("params/missing")
