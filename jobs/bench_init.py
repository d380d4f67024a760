"""Device memory of the trainers' step-0 build at real size, per device, against the whole state.

    python -m jobs.bench_init --cpu-devices 8      # any machine: 8 CPU host devices, compiled, nothing allocated
    python -m jobs.bench_init                      # the devices of this host
    python -m jobs.bench_init --build --configs pi06_yam_vial_30fps_from_sft_recap   # GPU: also run it, read the peak

The trainers build the step-0 state already split over their FSDP mesh (`recap_ray.train.initial_state`):
each device is given only its shard of the initial weights and one jitted program draws
the random leaves, the optimizer state and the EMA in place, each placed weight donated to become its
state leaf. The one-device build it replaced held the whole state on each host's first device before
FSDP split it. openpi's `init_train_state` passes the loaded weights replicated, so every device holds
all of them beside its share of the state (the `openpi layout` column, computed from the parts of the
same program, not run: whole initial weights + output + temp; on more than one device a donated whole
weight cannot become a 1/N shard in place).

XLA's memory analysis of the compiled program gives one device's bytes: arguments + output + temp -
aliased (the donated arguments reused as outputs). Compiling allocates nothing, so `--cpu-devices N`
measures an N-device mesh on a machine without accelerators. Policies start from an SFT checkpoint
(every weight but LoRA's), the value model from the vlm bundle. `--build` also runs the build, with zeros
for the initial weights, and reads the first device's peak from its allocator (`memory_stats`, on
accelerators: the figure XLA's plan stands for); one config per process, as the peak counts from its start.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from jobs import cli
from recap_ray.configs import registry
from recap_ray.models import lora, weights
from recap_ray.models.value_config import ValueModelConfig
from recap_ray.train import initial_state, initial_weights, optim, sharding, tasks

GB = 1e9


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to measure."""

    configs: tuple[str, ...] = ("pi06_yam_vial_30fps_from_sft_recap", "pi06_yam_vial_30fps_lora_from_sft_recap", "value")
    cpu_devices: int = 0  # > 0: a mesh of this many CPU host devices (before JAX starts); 0: this host's devices
    out: Path | None = None  # also write the rows here as JSON
    build: bool = False  # also run the build (zeros as the initial weights) and read the device's peak; one config


def _task(name: str) -> tasks.Task:
    config = registry.get(name)
    if isinstance(config, ValueModelConfig):
        return tasks.ValueTask(config, tokenizer_path=Path("unused"), init=None)
    return tasks.PolicyTask(config, tokenizer_path=Path("unused"), init="none", norm_stats_path=None)


def _bytes(tree: Any) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def measure(name: str, mesh: jax.sharding.Mesh, build: bool = False) -> dict[str, Any]:
    """One config's build on `mesh`: whole state, initial weights, and one device's share (`build`: also run)."""
    task = _task(name)
    leaves = {p: x for p, x in weights.flatten(weights.model_params(nnx.eval_shape(task.create_model))).items()
              if not lora.is_lora_path(p)}  # what a checkpoint gives  # fmt: skip
    tx = optim.optimizer(task.optimizer(1_000))
    if build:  # calloc'd zeros: no host memory is touched until a shard is copied out
        leaves = {p: np.zeros(x.shape, x.dtype) for p, x in leaves.items()}
    built = initial_state.program(task.create_model, initial_weights.Host(leaves), task.trainable(), tx, use_ema=task.ema_decay is not None,
                                  seed=0, mesh=mesh)  # fmt: skip
    memory = built.memory()
    row = {"config": name, "devices": mesh.size, "device_kind": mesh.devices.flat[0].device_kind,
           "state_bytes": _bytes(built.abstract), "initial_weights_bytes": _bytes(leaves),
           "per_device": memory, "per_device_bytes": memory["total"],
           "openpi_layout_bytes": _bytes(leaves) + memory["output"] + memory["temp"]}  # fmt: skip
    if build:
        jax.block_until_ready(built.build()[1])
        stats = mesh.devices.flat[0].memory_stats()  # None on CPU
        row["measured_peak_bytes"] = stats.get("peak_bytes_in_use") if stats else None
    return row


def main(bench: BenchConfig) -> list[dict[str, Any]]:
    """Measure every config; prints a table, returns the rows."""
    if bench.build and len(bench.configs) != 1:
        raise ValueError(f"--build measures one config per process (the device's peak counts from its start), got {list(bench.configs)}")
    if bench.cpu_devices:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", bench.cpu_devices)
    mesh = sharding.make_mesh()
    print(f"{'config':45} {'dev':>3} {'state GB':>9} {'init GB':>8} {'per device GB':>14} {'of state':>8} {'openpi layout GB':>17}")  # noqa: T201
    rows = []
    for name in bench.configs:
        r = measure(name, mesh, bench.build)
        rows.append(r)
        print(f"{name:45} {r['devices']:3d} {r['state_bytes'] / GB:9.2f} {r['initial_weights_bytes'] / GB:8.2f} "  # noqa: T201
              f"{r['per_device_bytes'] / GB:14.2f} {r['per_device_bytes'] / r['state_bytes']:8.3f} "
              f"{r['openpi_layout_bytes'] / GB:17.2f}", flush=True)  # fmt: skip
        if "measured_peak_bytes" in r:
            peak = r["measured_peak_bytes"]
            print(f"  run: the device's peak {'n/a (no allocator statistics on CPU)' if peak is None else f'{peak / GB:.2f} GB'}")  # noqa: T201
        if bench.out:
            bench.out.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main(cli.parse(BenchConfig, __doc__))
