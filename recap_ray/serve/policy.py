"""A served pi0.6 policy: a checkpoint in, `infer(obs) -> {"actions", "policy_timing"}` out; no sockets.

Observations go through the training transforms of an `_infer` config (no repack, no advantage
dropout) behind `ForceAdvantage`, which sets `adv_ind` to "positive" whatever the client sent or
left out. With `cfg_beta`, each Euler step mixes the velocity for the prompt with the advantage
clause (v_c) and without it (v_u): v = v_u + beta (v_c - v_u) (serving spec §3).
Batches are padded to a power of two (at most `max_batch_size`), so XLA compiles a few shapes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from recap_ray import transforms
from recap_ray.configs import policy as policy_configs
from recap_ray.configs import registry
from recap_ray.data import norm_stats as norm_stats_lib
from recap_ray.models import checkpoints, pi05, tokenizer, weights
from recap_ray.serve import protocol

logger = logging.getLogger(__name__)

ADV_IND = "positive"  # the advantage indicator every served request is conditioned on


def example_observation(state_dim: int, prompt: str | None, side: int = 224, seed: int = 0) -> dict[str, Any]:
    """A valid random observation, for warm-up and benchmarks: three side x side CHW uint8 Aloha cameras, a state in
    [-1, 1], and `prompt` (a placeholder when the config has no default prompt)."""
    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 256, (3, side, side), np.uint8) for c in ("cam_high", "cam_left_wrist", "cam_right_wrist")}
    return {"images": images, "state": rng.uniform(-1, 1, state_dim).astype(np.float32),
            "prompt": prompt or "do something"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ForceAdvantage:
    """Replace the sample's `adv_ind` by `value` (None: drop it, the unconditional prompt)."""

    value: str | None = ADV_IND  # the indicator to condition on

    def __call__(self, data: transforms.Sample) -> transforms.Sample:
        out = {k: v for k, v in data.items() if k != "adv_ind"}
        if self.value is not None:
            out["adv_ind"] = self.value
        return out


@dataclasses.dataclass(frozen=True)
class PolicyOptions:
    """How the policy samples."""

    num_steps: int = 10  # Euler steps per chunk
    cfg_beta: float | None = None  # guidance scale beta; None: conditioned sampling alone (one pass a step)
    max_batch_size: int = 8  # largest batch run at once; bigger lists are split
    seed: int = 0  # seed of the noise generator
    fixed_noise: bool = False  # one noise draw for every request: the answer is a function of the observation
    param_dtype: str = "bfloat16"  # parameters are cast to this for inference (openpi serves bf16)
    max_image_side: int = 2048  # observation limit (protocol.ObservationSpec)
    max_message_bytes: int = 12 * 1024 * 1024  # request frame limit, below the proxy's 16 MiB


def input_pipeline(config: policy_configs.PolicyConfig, stats: Mapping[str, Any],
                   prompt_tokenizer: tokenizer.PromptTokenizer, adv_ind: str | None) -> transforms.Compose:
    """The serving transforms of `config` with `adv_ind` forced (None: no advantage clause)."""
    base = transforms.policy_inputs(config.model, stats, prompt_tokenizer, default_prompt=config.default_prompt,
                                    repack=False, delta_actions=config.use_delta_joint_actions,
                                    adapt_to_pi=config.adapt_to_pi)  # fmt: skip
    steps: list[transforms.Transform] = [ForceAdvantage(adv_ind)]
    for step in base.transforms:
        if adv_ind is None and isinstance(step, transforms.TokenizePrompt):
            step = dataclasses.replace(step, adv_ind_required=False)
        steps.append(step)
    return transforms.Compose(tuple(steps))


def infer_config(name: str) -> policy_configs.PolicyConfig:
    """The registered `_infer` policy config `name`; a training name is refused, naming its twin."""
    config = registry.get(name, policy_configs.PolicyConfig)
    if not config.is_infer:
        raise ValueError(f"config {name!r} is a training config; serve its inference twin {name + '_infer'!r}")
    return config


def _bucket(n: int, cap: int) -> int:
    return min(1 << (n - 1).bit_length(), cap)


def _stack(items: Sequence[Any], size: int) -> Any:
    """Stack per-sample trees along a new batch axis, padded to `size` by repeating the last one."""
    padded = list(items) + [items[-1]] * (size - len(items))
    return jax.tree.map(lambda *xs: np.stack(xs), *padded)


class Policy:
    """pi0.6 inference with the training transforms; thread-compatible, one batch at a time."""

    def __init__(self, config: policy_configs.PolicyConfig, model: pi05.Pi05, stats: Mapping[str, Any],
                 prompt_tokenizer: tokenizer.PromptTokenizer, options: PolicyOptions = PolicyOptions(),
                 metadata: Mapping[str, Any] | None = None) -> None:
        self.config, self.options = config, options
        self.spec = protocol.ObservationSpec(state_dim=int(np.asarray(stats["state"].q01).shape[-1]),
                                             max_image_side=options.max_image_side,
                                             max_message_bytes=options.max_message_bytes)  # fmt: skip
        q01, q99 = np.asarray(stats["state"].q01), np.asarray(stats["state"].q99)
        self._state_range = (float(np.min(q01)), float(np.max(q99)))
        self._cond = input_pipeline(config, stats, prompt_tokenizer, ADV_IND)
        self._uncond = input_pipeline(config, stats, prompt_tokenizer, None) if options.cfg_beta is not None else None
        # The robot's action width is the trained one (the actions' norm stats), which may exceed the state's
        # (mobile Aloha: 14 joints + 2 base velocities).
        self.action_dim = int(np.asarray(stats["actions"].q01).shape[-1]) if "actions" in stats else self.spec.state_dim
        self._outputs = transforms.policy_outputs(stats, delta_actions=config.use_delta_joint_actions,
                                                  action_dim=self.action_dim, adapt_to_pi=config.adapt_to_pi)  # fmt: skip
        graphdef, state = nnx.split(model)
        self._state = jax.tree.map(lambda x: jnp.asarray(x, options.param_dtype), state)
        num_steps, beta = options.num_steps, options.cfg_beta
        self._run = jax.jit(lambda st, c, u, noise: nnx.merge(graphdef, st).sample_actions(
            None, c, num_steps=num_steps, noise=noise, uncond_obs=u, cfg_beta=1.0 if beta is None else beta))
        self._rng = np.random.default_rng(options.seed)
        shape = (config.model.action_horizon, config.model.action_dim)
        self._fixed = np.random.default_rng(options.seed).standard_normal(shape, np.float32) if options.fixed_noise else None
        self.metadata: dict[str, Any] = {
            "config": config.name, "adv_ind": ADV_IND, "cfg_beta": beta, "num_steps": num_steps,
            "action_horizon": config.model.action_horizon, "action_dim": self.action_dim,
            "observation": self.spec.as_dict(), **(metadata or {}),
        }  # fmt: skip

    @classmethod
    def load(cls, checkpoint: str | os.PathLike[str], config: str | policy_configs.PolicyConfig, *,
             tokenizer_path: str | os.PathLike[str] | None = None, options: PolicyOptions = PolicyOptions()) -> Policy:
        """From a training run directory (its latest step) or one step directory, in the checkpoints layout (local or gs://)."""
        cfg = infer_config(config) if isinstance(config, str) else config
        step = checkpoints.resolve(checkpoint)
        tok_file = epath.Path(tokenizer_path) if tokenizer_path is not None else checkpoints.tokenizer_file(step)
        if not tok_file.is_file():
            raise FileNotFoundError(f"{step}: no tokenizer at {tok_file}; pass one (--tokenizer)")
        model = cfg.model.abstract_model()
        weights.load_into(model, checkpoints.params_dir(step))
        left = [p for p, x in weights.flatten(weights.model_params(model)).items() if isinstance(x, jax.ShapeDtypeStruct)]
        if left:
            raise ValueError(f"{step}: checkpoint lacks {len(left)} parameters the model needs, e.g. {left[:3]}")
        stats = norm_stats_lib.load(checkpoints.norm_stats_file(step, cfg.asset_id))
        prompt_tokenizer = tokenizer.PromptTokenizer(tok_file, cfg.model.max_token_len)
        logger.info("loaded %s from %s", cfg.name, step)
        identity = {"checkpoint": str(step), "checkpoint_saved_ns": checkpoints.saved_ns(step)}  # a retrained step differs
        return cls(cfg, model, stats, prompt_tokenizer, options, metadata=identity)

    def prepare(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """Validate one observation and run the input transforms: {"cond", "uncond" (CFG only), "state" (the
        model's, normalized), "client_state" (as sent)}."""
        protocol.validate(dict(obs), self.spec)
        cond = self._cond(dict(obs))
        out = {"state": cond.pop("state"), "cond": cond, "client_state": np.asarray(obs["state"])}
        if self._uncond is not None:
            uncond = self._uncond(dict(obs))
            uncond.pop("state")
            out["uncond"] = uncond
        return out

    def _noise(self, n: int) -> np.ndarray:
        if self._fixed is not None:
            return np.broadcast_to(self._fixed, (n, *self._fixed.shape))
        shape = (n, self.config.model.action_horizon, self.config.model.action_dim)
        return self._rng.standard_normal(shape, np.float32)

    def _run_chunk(self, prepared: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """One model call on up to max_batch_size prepared samples."""
        size = _bucket(len(prepared), self.options.max_batch_size)
        cond = _stack([p["cond"] for p in prepared], size)
        uncond = _stack([p["uncond"] for p in prepared], size) if self._uncond is not None else None
        noise = np.zeros((size, self.config.model.action_horizon, self.config.model.action_dim), np.float32)
        noise[: len(prepared)] = self._noise(len(prepared))
        start = time.perf_counter()
        actions = np.asarray(self._run(self._state, cond, uncond, noise), np.float32)
        infer_ms = (time.perf_counter() - start) * 1000
        timing = {"infer_ms": infer_ms, "batch_size": len(prepared)}
        answers: list[dict[str, Any] | Exception] = []
        for p, a in zip(prepared, actions, strict=False):
            out = np.asarray(self._outputs({"state": p["state"], "actions": a})["actions"], np.float32)
            answers.append({"actions": out, "policy_timing": {**timing, "prepare_ms": p["prepare_ms"]}} if np.all(np.isfinite(out))
                           else self._non_finite(p["client_state"]))  # fmt: skip
        return answers

    def _non_finite(self, state: np.ndarray) -> protocol.InvalidRequest:
        """The error for an observation whose actions overflowed: never send a robot inf or NaN."""
        trained = self._state_range
        return protocol.InvalidRequest(
            f"the actions computed for this observation are not finite; its 'state' spans "
            f"[{np.min(state):g}, {np.max(state):g}] against a trained range of [{trained[0]:g}, {trained[1]:g}]: "
            "wrong units or a corrupt reading?")

    def infer_batch(self, observations: Sequence[Mapping[str, Any]], *,
                    isolate_errors: bool = False) -> list[dict[str, Any] | Exception]:
        """Answers in order; with `isolate_errors` a bad observation gets its exception, the rest are answered."""
        prepared: list[dict[str, Any] | Exception] = []
        for obs in observations:
            start = time.perf_counter()
            try:
                prepared.append({**self.prepare(obs), "prepare_ms": (time.perf_counter() - start) * 1000})
            except Exception as err:
                if not isolate_errors:
                    raise
                prepared.append(err)
        good = [p for p in prepared if not isinstance(p, Exception)]
        answers: list[dict[str, Any] | Exception] = []
        cap = self.options.max_batch_size
        for i in range(0, len(good), cap):
            answers += self._run_chunk(good[i : i + cap])
        if not isolate_errors and (failed := [a for a in answers if isinstance(a, Exception)]):
            raise failed[0]
        it = iter(answers)
        return [p if isinstance(p, Exception) else next(it) for p in prepared]

    def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """One observation -> {"actions": float32 (H, state_dim), "policy_timing": {"infer_ms" (the model call, openpi's
        field), "batch_size", "prepare_ms" (this observation's input transforms)}}."""
        (answer,) = self.infer_batch([obs])
        assert not isinstance(answer, Exception)
        return answer

    def example(self, seed: int = 0) -> dict[str, Any]:
        """A valid random observation for warm-up (`example_observation` of this policy's sizes)."""
        return example_observation(self.spec.state_dim, self.config.default_prompt, seed=seed)

    def warmup(self) -> None:
        """Compile every batch bucket now, so no request waits for XLA."""
        size = 1
        while True:
            start = time.perf_counter()
            self.infer_batch([self.example()] * size)
            logger.info("compiled batch %d in %.1f s", size, time.perf_counter() - start)
            if size >= self.options.max_batch_size:
                return
            size = _bucket(size + 1, self.options.max_batch_size)
