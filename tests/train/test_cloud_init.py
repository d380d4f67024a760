"""Consumers of run directories in a gs:// bucket (the GCS emulator): `--init gs://...` starts the
value model and the policy from a run's weights (run or step directory; also a vlm bundle for the
value model and a bare openpi params/ item for the policy), serving loads a policy run, and
relabelling with a value run in the bucket, read by the Ray value actors, gives the labels of the
same run on a local disk."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp
import pytest
import tyro
from etils import epath
from flax import nnx

from actors import relabel as relabel_actors
from jobs import relabel as relabel_job
from recap_ray.configs import registry
from recap_ray.data import dataset, norm_stats, versions
from recap_ray.models import checkpoints, value_weights, weights
from recap_ray.serve import policy as policy_lib
from recap_ray.train import checkpointing, run_record, sharding, tasks
from tests.train.conftest import random_params

STEP = 3


def _write_run(run_dir: str | Path, kind: str, config: str, params_item: Mapping[str, Any], assets: dict[str, bytes]) -> None:
    """A finished run as training leaves it: run.json, and checkpoints/STEP with params and assets saved by orbax."""
    mngr = checkpointing.manager(run_dir, checkpointing.CheckpointOptions(async_save=False))
    mngr.save(STEP, args=ocp.args.Composite(**{checkpoints.PARAMS_ITEM: ocp.args.PyTreeSave(dict(params_item)),
                                                 checkpoints.ASSETS_DIR: checkpointing.AssetsSave(assets)}))  # fmt: skip
    mngr.close()
    run_record.write(run_dir, {"kind": kind, "config": config, "status": "finished", "step": STEP, "checkpoints": [STEP]})


def _assert_params_equal(got: Mapping[str, Any], want: Mapping[str, Any]) -> None:
    got, want = weights.flatten(got), weights.flatten(want)
    assert got.keys() == want.keys()
    for path, x in want.items():
        np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(x).astype(got[path].dtype), err_msg=path)


@pytest.fixture(scope="module")
def value_runs(tmp_path_factory, gcs_bucket, sentencepiece_model) -> tuple[Path, str, dict[str, Any]]:
    """The same value_tiny run on a local disk and in the bucket: (local, gs:// run, its EMA params)."""
    model = registry.get("value_tiny").abstract_model()
    params, ema = random_params(model, 1), random_params(model, 2)
    item = {"params": params, "ema_params": ema, "step": STEP}
    assets = {checkpoints.TOKENIZER_FILE: sentencepiece_model.read_bytes()}
    local, remote = tmp_path_factory.mktemp("cloud_init") / "value", f"{gcs_bucket}/runs/value"
    for run_dir in (local, remote):
        _write_run(run_dir, "value", "value_tiny", item, assets)
    return local, remote, ema


def test_value_init_from_bucket(value_runs, gcs_bucket, sentencepiece_model):
    local, remote, ema = value_runs
    config = registry.get("value_tiny")
    for source in (remote, f"{remote}/checkpoints/{STEP}"):  # a run directory, one step directory
        got = tasks.ValueTask(config, sentencepiece_model, init=source).initial_weights().read()
        _assert_params_equal(got, ema)  # --init takes the EMA weights

    copied = epath.Path(f"{gcs_bucket}/copied/value")  # a local run copied up file by file (gsutil cp -r)
    for f in checkpoints.files(local):
        (copied / f.relative_to(local)).write_bytes(f.read_bytes())
    _assert_params_equal(tasks.ValueTask(config, sentencepiece_model, init=str(copied)).initial_weights().read(), ema)
    with pytest.raises(FileNotFoundError, match=f"no checkpoint directory at {gcs_bucket}/runs/nothing$"):  # not gs:/
        tasks.ValueTask(config, sentencepiece_model, init=f"{gcs_bucket}/runs/nothing").initial_weights()

    bundle = epath.Path(f"{gcs_bucket}/bundles/value_tree")  # a vlm_ckpt bundle holding a whole value tree
    params = random_params(config.abstract_model(), 4)
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(bundle / value_weights.GEMMA_SUBDIR / "step_00000001", {"params": params, "ema_params": ema, "step": 1})
    (bundle / value_weights.TOKENIZER_FILE).write_bytes(sentencepiece_model.read_bytes())
    got = tasks.ValueTask(config, sentencepiece_model, init=str(bundle)).initial_weights().read()
    _assert_params_equal(got, params)  # a bundle gives its params, as pistar trains from


def test_policy_init_and_serving_from_bucket(gcs_bucket, sentencepiece_model):
    config = registry.get("pi06_tiny")
    params = random_params(config.model.abstract_model(), 3)
    unit = norm_stats.NormStats(mean=np.zeros(14), std=np.ones(14), q01=-np.ones(14), q99=np.ones(14))
    assets = {f"{config.asset_id}/{checkpoints.NORM_STATS_FILE}": norm_stats.dumps({"state": unit, "actions": unit}).encode(),
              checkpoints.TOKENIZER_FILE: sentencepiece_model.read_bytes()}  # fmt: skip
    run = f"{gcs_bucket}/runs/policy"
    _write_run(run, "policy", config.name, weights.openpi_item(params, as_numpy=True), assets)
    openpi_params = f"{gcs_bucket}/openpi/pi06_tiny/params"  # openpi's bare params/ item, as gs://openpi-assets has
    weights.save(openpi_params, params)

    mesh = sharding.make_mesh()
    for source in (run, openpi_params):  # a step directory takes the run's branch (value test)
        initial = tasks.PolicyTask(config, sentencepiece_model, init=source, norm_stats_path=None).initial_weights()
        _assert_params_equal(initial.read(), params)
        placed = initial.place({p: sharding.replicated(mesh) for p in initial.specs})  # read by tensorstore into the mesh
        _assert_params_equal({p: np.asarray(x) for p, x in placed.items()}, params)

    policy = policy_lib.Policy.load(run, "pi06_tiny_infer")  # weights, norm stats and tokenizer from the bucket
    served = weights.flatten(nnx.to_pure_dict(policy._state))
    _assert_params_equal({p: served[p] for p in weights.flatten(params)}, params)  # cast to bfloat16 for serving
    assert policy.metadata["checkpoint"] == f"{run}/checkpoints/{STEP}"
    assert policy.spec.state_dim == 14


def _columns(root: Path) -> dict[str, list[np.ndarray]]:
    with dataset.open(root) as ds:
        return {key: [ds.column(ep.index, key) for ep in ds.meta.episodes] for key in ("value", "advantage", "adv_ind")}


def test_relabel_with_value_run_in_bucket_equals_local(value_runs, train_dataset, gcs_env, ray_local, tmp_path, monkeypatch):
    local, remote, _ = value_runs
    # The session's Ray started without the emulator's environment: the value actors get it through their
    # runtime_env, as a cluster's workers would get credentials (CPU actors have no other env to keep).
    monkeypatch.setattr(relabel_actors, "_actor_env", lambda gpus: {"env_vars": gcs_env})
    outputs = {}
    for name, run in (("local", str(local)), ("bucket", remote)):
        args = ["--dataset", str(train_dataset), "--value-ckpt", run, "--output", str(tmp_path / name), "--lookahead", "4",
                "--gpus-per-actor", "0", "--batch-size", "8"]  # fmt: skip
        outputs[name] = relabel_job.main(tyro.cli(relabel_job.Config, args=args))
    got, want = _columns(outputs["bucket"]), _columns(outputs["local"])
    for key in want:
        for e, (a, b) in enumerate(zip(got[key], want[key])):
            np.testing.assert_array_equal(a, b, err_msg=f"{key}, episode {e}")
    assert len(np.unique(np.concatenate(got["value"]))) > 1  # real values, not a constant
    assert versions.read_lineage(outputs["bucket"])["params"]["value_checkpoint"] == f"{remote}/checkpoints/{STEP}"
