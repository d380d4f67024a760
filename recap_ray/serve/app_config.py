"""Options of the served policy application, as plain typed fields (`actors/serve_app.py` turns them into Serve).

Two deployments, two autoscaling configs (serving spec §2.4): a websocket session is pinned to one
ingress replica and counts as one ongoing request for its whole life, so the ingress scales with
connected robots (its target counts sessions) while the GPU model deployment scales with
inference load (each session has at most one inference in flight).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from recap_ray.serve import policy, protocol


@dataclasses.dataclass(frozen=True)
class Autoscaling:
    """Serve's `autoscaling_config`, the fields we set."""

    min_replicas: int = 1  # keep >= 1: openpi-client's 10 s open timeout does not outlive a cold start
    max_replicas: int = 1  # upper bound; new GPU nodes come from the Ray autoscaler / KubeRay
    target_ongoing_requests: float = 8.0  # ongoing requests per replica the autoscaler aims at

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError(f"autoscaling: need 0 <= min_replicas <= max_replicas >= 1, got {self}")
        if self.target_ongoing_requests <= 0:
            raise ValueError(f"autoscaling: target_ongoing_requests must be > 0, got {self.target_ongoing_requests}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class AppConfig:
    """One served policy: checkpoint, batching, scaling, resources, access."""

    checkpoint: str  # training run directory (latest step) or one step directory, as the replicas see it
    config: str  # registered `_infer` policy config
    tokenizer: str | None = None  # sentencepiece model when the checkpoint has no assets/tokenizer.model
    api_key: str | None = None  # require `Authorization: Api-Key <key>` (openpi-client's api_key); None: open
    api_key_env: str | None = None  # or read the key from this environment variable on the ingress replicas
    max_batch_size: int = 8  # most requests batched into one model call
    batch_wait_timeout_s: float = 0.0  # wait for a batch to fill; 0: take what queued while the last batch ran
    model_autoscaling: Autoscaling = Autoscaling(1, 1, 8.0)  # GPU model replicas; target counts inferences
    ingress_autoscaling: Autoscaling = Autoscaling(1, 1, 100.0)  # websocket replicas; target counts sessions
    max_sessions_per_ingress: int = 200  # open websocket sessions one ingress replica holds (more queue)
    num_gpus: float = 1.0  # GPUs per model replica (0 on CPU)
    model_num_cpus: float = 1.0  # CPUs per model replica (input transforms run there)
    ingress_num_cpus: float = 0.5  # CPUs per ingress replica
    num_steps: int = 10  # Euler steps per chunk
    cfg_beta: float | None = None  # classifier-free guidance scale; None: conditioned sampling only
    fixed_noise: bool = False  # the same noise for every request (deterministic answers)
    seed: int = 0  # noise seed
    max_message_bytes: int = 12 * 1024 * 1024  # request frame limit (the proxy itself drops > 16 MiB)
    access_log: bool = False  # Serve's log line per inference on the model replicas (the ingress logs one per session
    # either way): off, it costs every answer its formatting and writing, and floods a fleet's logs at robot rates
    direct_ingress: bool = False  # the ingress replicas take connections on the port themselves, without Serve's
    # proxy hop (Ray's experimental direct ingress; needs its environment on every node: jobs.serve.direct_ingress_env);
    # at most one ingress replica per node, each on the port

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps (Euler steps per chunk) must be >= 1, got {self.num_steps}")
        for field in ("num_gpus", "model_num_cpus", "ingress_num_cpus"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must be >= 0, got {getattr(self, field)}")
        if not 0 < self.max_message_bytes < protocol.PROXY_MAX_MESSAGE_BYTES:
            raise ValueError(f"max_message_bytes must be in (0, {protocol.PROXY_MAX_MESSAGE_BYTES}): larger "
                             f"messages are dropped by the serve proxy first; got {self.max_message_bytes}")  # fmt: skip
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("give api_key or api_key_env, not both")

    @property
    def policy_options(self) -> policy.PolicyOptions:
        return policy.PolicyOptions(num_steps=self.num_steps, cfg_beta=self.cfg_beta, max_batch_size=self.max_batch_size,
                                    seed=self.seed, fixed_noise=self.fixed_noise,
                                    max_message_bytes=self.max_message_bytes)  # fmt: skip

    @property
    def model_max_ongoing_requests(self) -> int:
        """Two batches per model replica: one running, the next filling."""
        return 2 * self.max_batch_size

    def resolved_api_key(self) -> str | None:
        """The key to check, from `api_key` or the `api_key_env` variable (which must then be set); without
        surrounding whitespace (a secret file's newline), which an HTTP header cannot carry."""
        if self.api_key_env is None:
            return (self.api_key or "").strip() or None
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise ValueError(f"api_key_env: environment variable {self.api_key_env!r} is unset or empty")
        return key

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> AppConfig:
        """From a Serve config's `args:` mapping; unknown keys are an error naming them."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - fields)
        if unknown:
            raise ValueError(f"serve app args: unknown keys {unknown}; known: {sorted(fields)}")
        kw = dict(args)
        for key in ("model_autoscaling", "ingress_autoscaling"):
            if isinstance(kw.get(key), Mapping):
                sub = {f.name for f in dataclasses.fields(Autoscaling)}
                bad = sorted(set(kw[key]) - sub)
                if bad:
                    raise ValueError(f"serve app args: {key} has unknown keys {bad}; known: {sorted(sub)}")
                kw[key] = Autoscaling(**kw[key])
        return cls(**kw)
