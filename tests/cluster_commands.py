"""Checks of `python -m jobs.<stage>` command lines in cluster configs and READMEs: the job exists and parses
its arguments with its own config, the config name is registered for that job, the GPU request fits its group,
the global batch splits over every worker count, the value model's initial weights are given."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import shlex
import typing
from typing import Any

import pytest
import tyro

from cluster_manifests import ROOT, GpuTarget


def entrypoint(command: str) -> tuple[str, list[str]]:
    """`[... --] python -m jobs.NAME ARGS` -> (NAME, ARGS)."""
    words = shlex.split(command)
    for i in range(len(words) - 2):
        if words[i : i + 2] == ["python", "-m"] and words[i + 2].startswith("jobs."):
            return words[i + 2].removeprefix("jobs."), words[i + 3 :]
    raise AssertionError(f"not a `python -m jobs.<stage>` command: {command!r}")


def parse(job: str, args: list[str], where: str) -> Any:
    """Parse `args` with the job's own CLI (the config its `main` takes); tyro's message on a bad flag."""
    assert (ROOT / "jobs" / f"{job}.py").is_file(), f"{where}: no jobs/{job}.py"
    config_type = typing.get_type_hints(importlib.import_module(f"jobs.{job}").main)["config"]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return tyro.cli(config_type, args=args)
    except SystemExit:
        pytest.fail(f"{where}: jobs.{job} rejects its arguments {args}:\n{err.getvalue()}")


def check_config_name(job: str, config: Any, where: str) -> None:
    from recap_ray.configs import registry

    name = getattr(config, "config", None)
    if not isinstance(name, str):
        return
    registry.get(name)  # raises naming the closest names
    if job == "train_value":
        assert name.startswith("value"), f"{where}: jobs.train_value with config {name!r}"
    if job == "train_policy":
        assert name.startswith("pi06") and not name.endswith("_infer"), f"{where}: jobs.train_policy with config {name!r}"


def check_fits(config: Any, target: GpuTarget, where: str) -> None:
    """The job's GPU request against one GPU group or node type."""
    if gpus := getattr(config, "gpus_per_worker", 0):
        assert gpus == target.gpus, (
            f"{where}: --gpus-per-worker {gpus}, but {target.label} has {target.gpus:g} GPUs a pod/node "
            "(one train worker per host owns all its GPUs)"
        )
        assert config.num_workers <= target.max_nodes, f"{where}: --num-workers {config.num_workers} > {target.label} max {target.max_nodes}"
        if config.min_workers is not None:
            assert 1 <= config.min_workers <= config.num_workers, f"{where}: --min-workers {config.min_workers} not in [1, --num-workers]"
        assert config.cpus_per_worker <= target.cpus, f"{where}: --cpus-per-worker {config.cpus_per_worker} > {target.cpus:g} on {target.label}"
        check_batch(config.batch_size, config.config, range(config.min_workers or config.num_workers, config.num_workers + 1), gpus,
                     config.grad_accum, where)  # fmt: skip
    if gpus := getattr(config, "gpus_per_actor", None):
        per_pod = target.gpus / gpus  # one value actor per GPU slot: actors pack whole onto a pod
        assert per_pod >= 1 and per_pod == int(per_pod), f"{where}: --gpus-per-actor {gpus} does not divide {target.gpus:g} GPUs of {target.label}"
        assert config.num_actors <= per_pod * target.max_nodes, (
            f"{where}: --num-actors {config.num_actors} x {gpus} GPUs > {target.label}: {target.max_nodes} x {target.gpus:g}"
        )


def check_batch(batch: int | None, name: str, workers: range, gpus: int, grad_accum: int, where: str) -> None:
    """The global batch (`batch`, else config `name`'s) splits over the devices of every worker count (recap_ray/train/loop.py)."""
    from recap_ray.configs import registry

    batch = batch or registry.get(name).batch_size
    for n in workers:
        assert batch % (n * gpus * grad_accum) == 0, (
            f"{where}: global batch {batch} of {name} does not split over {n} workers x {gpus} GPUs x {grad_accum} micro-batches"
        )


def check_init(job: str, config: Any, env: set[str], where: str) -> None:
    """jobs.train_value's initial weights are given: `--init`, or the bundle the config names in an environment variable set."""
    from recap_ray.configs import registry
    from recap_ray.models import value_weights

    if job == "train_value" and config.init is None and registry.get(config.config).init_weights == "bundle":
        assert value_weights.BUNDLE_ENV_VAR in env, (
            f"{where}: config {config.config!r} starts from the bundle in ${value_weights.BUNDLE_ENV_VAR}, which is not set: pass --init"
        )


def submit_env(command: str) -> set[str]:
    """The env_vars of a `ray job submit` command's --runtime-env-json."""
    words = shlex.split(command)
    words = words[: words.index("--")] if "--" in words else []
    if "--runtime-env-json" not in words:
        return set()
    return set(json.loads(words[words.index("--runtime-env-json") + 1]).get("env_vars", {}))
