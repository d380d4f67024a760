"""Benchmark the training steps the trainers run: step time, examples/s, MFU, scaling over devices.

    python -m jobs.bench_train                                   # real size, on the GPUs of this host
    python -m jobs.bench_train --value-config value_tiny --policy-configs pi06_tiny \\
        --value-batches 4 --policy-batches 4 --iters 3           # smoke run on CPU
    python -m jobs.bench_train --value-config None --policy-remat nothing_saveable dots_with_no_batch_dims_saveable none

What is timed is exactly the trainers' step (`recap_ray.train.step.make_step` with each task's
optimizer, loss, trainable filter and EMA, jitted with the FSDP shardings of `train.sharding`), on
random weights drawn on the devices as the trainers draw them (`train.initial_state`) and random
batches already on the device (two, used in turn), so the figure is the accelerator's, not the
loader's. Each case is compiled, warmed up, then
stepped `iters` times with a sync after every step; the median step time is reported.

FLOPs: `model_tflops` counts 3x the forward pass's matrix multiplications and convolutions
(`matmul_flops`, read off the loss's jaxpr), the usual MFU convention (forward + backward = 3x
forward); it overstates the useful work of runs with frozen weights (the value model's backbones,
LoRA), which need no weight gradients there. (XLA's own cost analysis is not used: on GPU it misses the work inside
cuBLAS/cuDNN calls.)

Rematerialisation: each policy case runs once per `--policy-remat` policy (openpi's
nothing_saveable recomputes every layer's forward in the backward pass; the dots policies keep the
matrix products, trading activation memory for step time). A case that does not fit the device is
reported as out of memory and the run goes on.

Scaling: for each device count n in `devices`, the mesh is the first n devices (all FSDP) and the
global batch is the per-device batch times n (weak scaling); efficiency = examples/s at n over
n x examples/s at the smallest n.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from jobs import cli
from recap_ray.configs import registry
from recap_ray.train import initial_state, initial_weights, optim, sharding, state as state_lib, step as step_lib, tasks



@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to measure."""

    value_config: str | None = "value"  # registered value-model config (None: skip)
    policy_configs: tuple[str, ...] = ("pi06_yam_vial_30fps_from_sft_recap", "pi06_yam_vial_30fps_lora_from_sft_recap")
    value_batches: tuple[int, ...] = (4, 32)  # per-device batches; 4 is pistar's reference (0.2 s/step)
    policy_batches: tuple[int, ...] = (32,)  # per-device batches
    policy_remat: tuple[str, ...] = ("nothing_saveable",)  # each policy case once per remat policy (models.stack.REMAT_POLICIES)
    devices: tuple[int, ...] = ()  # device counts for the scaling rows; () = 1 and all (if more than 1)
    iters: int = 10  # timed steps per case
    warmup: int = 2  # untimed steps after compiling
    peak_tflops: float = 989.0  # dense bf16 peak of one device (H100/H200 SXM datasheet: 989)
    seed: int = 0
    out: Path | None = None  # also write the results here as JSON


@dataclasses.dataclass(frozen=True)
class Case:
    """One model and how it trains, built from the registered config through the trainers' Task."""

    name: str
    task: tasks.Task
    batch: Callable[[np.random.Generator, int], dict[str, Any]]


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
    return rng.uniform(lo, hi, shape).astype(np.float32)


def _pixels(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random uint8 images, as the trainers' loaders send them (the step maps them to [-1, 1])."""
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _tokens(rng: np.random.Generator, batch: int, length: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ids in [1, vocab) and a prefix mask covering a random 25-100% of the row."""
    ids = rng.integers(1, min(vocab, 32_000), (batch, length), dtype=np.int32)
    lengths = rng.integers(max(1, length // 4), length + 1, batch)
    return ids, np.arange(length)[None] < lengths[:, None]


def value_case(name: str) -> Case:
    config = registry.get(name)
    task = tasks.ValueTask(config, tokenizer_path=Path("unused"), init=None)  # the tokenizer is not read here

    def batch(rng: np.random.Generator, b: int) -> dict[str, Any]:
        s, c = config.image_size, len(config.cameras)
        tokens, mask = _tokens(rng, b, config.max_token_len, config.llm.vocab_size)
        return {"images": _pixels(rng, (b, c, s, s, 3)), "image_masks": np.ones((b, c), bool),
                "tokens": tokens, "token_mask": mask, "value_label": _uniform(rng, (b,), -1, 0)}  # fmt: skip

    return Case(name, task, batch)


def policy_case(name: str, remat: str) -> Case:
    config = registry.get(name)
    model_config = dataclasses.replace(config.model, remat=remat)  # an unknown policy is refused here
    config = dataclasses.replace(config, model=model_config)
    task = tasks.PolicyTask(config, tokenizer_path=Path("unused"), init="none", norm_stats_path=None)

    def batch(rng: np.random.Generator, b: int) -> dict[str, Any]:
        obs, actions = model_config.fake_inputs(b)
        s = model_config.image_size
        tokens, mask = _tokens(rng, b, model_config.max_token_len, model_config.vocab_size)
        return {
            "images": {k: _pixels(rng, (b, s, s, 3)) for k in obs["images"]},
            "image_masks": {k: np.ones((b,), bool) for k in obs["image_masks"]},
            "tokenized_prompt": tokens,
            "tokenized_prompt_mask": mask,
            "actions": rng.standard_normal(actions.shape).astype(np.float32),
        }

    return Case(f"{name} remat={remat}", task, batch)


def _sub_jaxprs(params: dict[str, Any]) -> list[Any]:
    """Jaxprs nested in an equation's parameters (pjit, remat, custom_vjp, cond branches, scan bodies)."""
    found = []
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):  # ClosedJaxpr
                found.append(v.jaxpr)
            elif hasattr(v, "eqns"):  # Jaxpr
                found.append(v)
    return found


def matmul_flops(jaxpr: Any) -> float:
    """FLOPs of every dot_general and convolution in `jaxpr` (2 per multiply-add), scan bodies times
    their length. The matrix work is what MFU counts; it is independent of the backend, whereas
    XLA's cost analysis on GPU does not see inside cuBLAS/cuDNN calls."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lc, _), (lb, _) = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            contract = np.prod([lhs[d] for d in lc])
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * contract
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial)
            per_output = np.prod([rhs[d] for d in spec[1:]])
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * per_output / eqn.params["feature_group_count"]
        for sub in _sub_jaxprs(eqn.params):
            total += matmul_flops(sub) * (eqn.params["length"] if name == "scan" else 1)
    return total


def _peak_bytes(device: jax.Device) -> int | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return None if not stats else stats.get("peak_bytes_in_use")


def measure(case: Case, per_device_batch: int, n_devices: int, bench: BenchConfig) -> dict[str, Any]:
    """Compile, warm up and time the trainers' step for one case on the first `n_devices` devices."""
    devices = jax.devices()[:n_devices]
    mesh = sharding.make_mesh(devices=devices)
    task = case.task
    tx = optim.optimizer(task.optimizer(1_000))
    use_ema = task.ema_decay is not None
    graphdef, state, shardings = initial_state.program(task.create_model, initial_weights.Host(), task.trainable(), tx, use_ema=use_ema,
                                                       seed=bench.seed, mesh=mesh).build()  # the trainers' random init  # fmt: skip
    global_batch = per_device_batch * n_devices
    rng = np.random.default_rng(bench.seed)
    data = sharding.data_sharding(mesh)
    batches = [jax.device_put(case.batch(rng, global_batch), data) for _ in range(2)]

    loss_fn = task.loss()
    step = jax.jit(
        step_lib.make_step(graphdef, tx, loss_fn, optim.schedule(task.optimizer(1_000)), ema_decay=task.ema_decay),
        in_shardings=(shardings, data), out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0,
    )  # fmt: skip

    def forward(st: state_lib.TrainState, batch: dict[str, Any]) -> jax.Array:
        return loss_fn(nnx.merge(graphdef, st.params, st.frozen), jax.random.key(0), batch)[0]

    print(f"  {case.name} b{global_batch} x{n_devices}: initialised", flush=True)  # noqa: T201
    fwd_flops = matmul_flops(jax.make_jaxpr(forward)(state, batches[0]).jaxpr)
    t0 = time.perf_counter()
    compiled = step.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t0
    print(f"  {case.name} b{global_batch} x{n_devices}: compiled in {compile_s:.1f} s", flush=True)  # noqa: T201
    times = []
    for i in range(bench.warmup + bench.iters):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batches[i % 2])
        jax.block_until_ready((state, metrics))
        if i >= bench.warmup:
            times.append(time.perf_counter() - t0)
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
        raise FloatingPointError(f"{case.name}: non-finite loss {loss} in the benchmark step")
    seconds = statistics.median(times)
    peak = bench.peak_tflops * 1e12 * n_devices
    trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    total = trainable + sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.frozen))
    result = {
        "case": case.name, "devices": n_devices, "device_kind": devices[0].device_kind,
        "global_batch": global_batch, "step_s": seconds, "step_s_spread": [min(times), max(times)],
        "examples_per_s": global_batch / seconds, "model_tflops": 3 * fwd_flops / seconds / 1e12,
        "mfu": 3 * fwd_flops / seconds / peak, "compile_s": compile_s, "loss": loss,
        "params": total, "trainable_params": trainable, "peak_bytes": _peak_bytes(devices[0]),
    }  # fmt: skip
    del state, batches, compiled
    gc.collect()
    jax.clear_caches()
    return result


def main(bench: BenchConfig) -> list[dict[str, Any]]:
    """Run every case at every batch and device count; returns the result rows."""
    counts = bench.devices or tuple(sorted({1, jax.device_count()}))
    if max(counts) > jax.device_count():
        raise ValueError(f"--devices {counts}: this host has {jax.device_count()} devices")
    plan: list[tuple[Case, tuple[int, ...]]] = []
    if bench.value_config:
        plan.append((value_case(bench.value_config), bench.value_batches))
    plan += [(policy_case(name, remat), bench.policy_batches) for name in bench.policy_configs for remat in bench.policy_remat]
    header = f"{'case':70} {'dev':>3} {'batch':>5} {'step s':>8} {'ex/s':>8} {'MFU':>6} {'scale':>6}"
    print(header, flush=True)  # noqa: T201
    rows = []
    for case, per_device_batches in plan:
        for b in per_device_batches:
            base = None
            for n in counts:
                try:
                    r = measure(case, b, n, bench)
                except jax.errors.JaxRuntimeError as err:  # one case too big for the device: say so, go on
                    if "RESOURCE_EXHAUSTED" not in str(err):
                        raise
                    r = {"case": case.name, "devices": n, "global_batch": b * n, "error": "out of device memory"}
                    del err  # its traceback holds the failed case's arrays
                    gc.collect()
                    jax.clear_caches()
                    print(f"{r['case']:70} {n:3d} {b * n:5d} {r['error']}", flush=True)  # noqa: T201
                else:
                    base = base or r["examples_per_s"] / n
                    r["scaling_efficiency"] = r["examples_per_s"] / (n * base)
                    print(f"{r['case']:70} {r['devices']:3d} {r['global_batch']:5d} {r['step_s']:8.4f} {r['examples_per_s']:8.1f} "  # noqa: T201
                          f"{r['mfu']:6.3f} {r['scaling_efficiency']:6.2f}", flush=True)  # fmt: skip
                rows.append(r)
                if bench.out:  # written after every row, so a cut-short run keeps what it measured
                    bench.out.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main(cli.parse(BenchConfig, __doc__))
