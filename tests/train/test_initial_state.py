"""The step-0 train state built on the mesh (`initial_state.program`) against the one-device build it replaced:
the value model in process, a LoRA policy on 4 CPU devices in a subprocess (its leaves really split)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from recap_ray.configs import registry
from recap_ray.models import value_weights, weights
from recap_ray.train import initial_state, optim, sharding, state as state_lib, tasks
from tests.train.conftest import random_params

SEED = 3
REPO = Path(__file__).resolve().parents[2]


def _lora_task(params_dir: Path) -> tasks.PolicyTask:
    """pi06_tiny with LoRA on both experts, initialised from a full (LoRA-less) openpi params/ dir."""
    base = registry.get("pi06_tiny")
    model = dataclasses.replace(base.model, paligemma_variant="tiny_lora", action_expert_variant="tiny_expert_lora")
    return tasks.PolicyTask(dataclasses.replace(base, model=model), Path("unused"), init=str(params_dir), norm_stats_path=None)


def _program(task: tasks.Task, mesh: jax.sharding.Mesh, **kw: Any) -> initial_state.Program:
    tx = optim.optimizer(task.optimizer(100))
    return initial_state.program(task.create_model, task.initial_weights(), task.trainable(), tx,
                                 use_ema=task.ema_decay is not None, seed=task.config.seed, mesh=mesh, **kw)  # fmt: skip


def _on_mesh(task: tasks.Task, mesh: jax.sharding.Mesh, **kw: Any) -> tuple[Any, state_lib.TrainState, Any]:
    return _program(task, mesh, **kw).build()


def _leaves(state: state_lib.TrainState) -> dict[str, np.ndarray]:
    def host(x: Any) -> np.ndarray:
        return np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)

    return {jax.tree_util.keystr(p): host(x) for p, x in jax.tree_util.tree_leaves_with_path(state)}


def _assert_same(got: state_lib.TrainState, want: state_lib.TrainState) -> None:
    """Leaf by leaf: same dtype and shape; values equal up to jit-vs-eager rounding of the random draws."""
    got, want = _leaves(got), _leaves(want)
    assert got.keys() == want.keys()
    for key, x in want.items():
        assert (got[key].dtype, got[key].shape) == (x.dtype, x.shape), key
        np.testing.assert_allclose(got[key].astype(np.float64), x.astype(np.float64), rtol=1e-6, atol=1e-8, err_msg=key)


def test_value_from_pistar_checkpoint_equals_load_model(tmp_path, sentencepiece_model):
    config = registry.get("value_tiny")
    raw, ema = random_params(config.abstract_model(), 1), random_params(config.abstract_model(), 2)
    path = value_weights.save_checkpoint(tmp_path / "ckpts", 7, raw, ema)
    task = tasks.ValueTask(config, sentencepiece_model, init=str(path))
    tx = optim.optimizer(task.optimizer(100))
    model = value_weights.load_model(config, checkpoint=path, use_ema=True)  # pistar's labelling default: EMA
    _, want = state_lib.create(model, task.trainable(), tx, use_ema=True, seed=config.seed)
    _, got, _ = _on_mesh(task, sharding.make_mesh())
    _assert_same(got, want)
    np.testing.assert_array_equal(np.asarray(weights.flatten(nnx.to_pure_dict(got.frozen))["llm/embedder/input_embedding"]),
                                  weights.flatten(ema)["llm/embedder/input_embedding"])  # fmt: skip

    _, resumed, _ = _on_mesh(task, sharding.make_mesh(), frozen_only=True)  # a resumed run: the frozen part only
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves((resumed.params, resumed.opt_state, resumed.ema)))
    _assert_same(resumed.replace(params=got.params, opt_state=got.opt_state, ema=got.ema, step=got.step, rng=got.rng), got)


def test_lora_policy_on_four_devices_equals_the_one_device_build(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "tests.train.test_initial_state", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["devices"] == 4
    assert report["split_leaves"] >= 50  # min_bytes 0: every leaf with an axis divisible by 4
    assert report["device0_bytes"] < 0.4 * report["total_bytes"]  # a quarter of the split leaves, the small rest whole
    assert report["program_bytes"] < 0.4 * report["total_bytes"]  # no device ever held the whole state
    assert report["aliased_bytes"] == report["argument_bytes"] > 0  # each placed weight became its state leaf in place


def _four_devices(tmp: Path) -> dict[str, Any]:
    """Run in the subprocess: pi06_tiny with LoRA from a full openpi params/ dir, built on a (1, 4) FSDP mesh with
    every leaf eligible to split, against the one-device build the trainer had (eager: create, load, cast,
    `state_lib.create`)."""
    config = registry.get("pi06_tiny")
    params = random_params(config.model.abstract_model(), SEED)
    weights.save(tmp / "params", params)
    task = _lora_task(tmp / "params")
    tx = optim.optimizer(task.optimizer(100))
    built = _program(task, sharding.make_mesh(), min_bytes=0)
    memory = built.memory()  # per device, the whole build
    _, got, shardings = built.build()

    model = task.config.model.create(nnx.Rngs(jax.random.key(task.config.seed)))
    weights.load_into(model, tmp / "params")
    state_lib.cast_frozen(model, task.config.model.frozen_filter())
    _, want = state_lib.create(model, task.trainable(), tx, use_ema=task.ema_decay is not None, seed=task.config.seed)
    _assert_same(got, want)
    frozen = weights.flatten(nnx.to_pure_dict(got.frozen))
    assert frozen and all(v.dtype == jax.numpy.bfloat16 for v in frozen.values())  # openpi's LoRA cast
    for path, value in frozen.items():  # the checkpoint's values, exactly (through bfloat16)
        np.testing.assert_array_equal(np.asarray(value), weights.flatten(params)[path].astype(jax.numpy.bfloat16), err_msg=path)

    split, device0, total = 0, 0, 0
    for leaf, target in zip(jax.tree.leaves(got), jax.tree.leaves(shardings)):
        assert leaf.sharding.is_equivalent_to(target, leaf.ndim), (leaf.sharding, target)
        shard = next(s for s in leaf.addressable_shards if s.device == jax.devices()[0])
        split += shard.data.shape != leaf.shape
        device0 += shard.data.nbytes
        total += leaf.nbytes
    return {"devices": jax.device_count(), "split_leaves": split, "device0_bytes": device0, "total_bytes": total,
            "program_bytes": memory["total"], "aliased_bytes": memory["aliased"], "argument_bytes": memory["arguments"]}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(_four_devices(Path(sys.argv[1]))))  # noqa: T201
