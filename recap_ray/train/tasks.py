"""What differs between training the value model and the policy, behind one small interface.

A `Task` creates the model, reads its initial weights, names the trainable parameters, the loss, the
optimizer, the sample maker, the `params` item consumers load and the assets a checkpoint carries.
The training loop (`loop.py`) only talks to this interface.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

import jax
import numpy as np
from etils import epath
from flax import nnx

from recap_ray import transforms, trossen
from recap_ray.configs import policy as policy_configs
from recap_ray.data import dataset as dataset_mod
from recap_ray.data import features as feats
from recap_ray.data import norm_stats as norm_stats_mod
from recap_ray.models import checkpoints, value_tokenizer, value_weights, weights
from recap_ray.models import value as value_lib
from recap_ray.models import tokenizer as tokenizer_mod
from recap_ray.models.value_config import ValueModelConfig
from recap_ray.train import initial_weights as initial_weights_lib, optim, samples, state as state_lib, step as step_lib

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ValueTask:
    """pistar's value-model training: C51 on value_label, heads trainable by default, EMA 0.99."""

    config: ValueModelConfig
    tokenizer_path: epath.Path
    init: str | None  # overrides config.init_weights when set
    cameras: Mapping[str, str | None] = dataclasses.field(default_factory=lambda: dict(samples.YAM_CAMERA_ROLES))  # role -> dataset camera  # fmt: skip

    kind = "value"
    keep_period = None  # pistar keeps no extra checkpoints: only the run's newest `keep`

    @property
    def ema_decay(self) -> float | None:
        return self.config.ema_decay

    def optimizer(self, num_steps: int) -> optim.OptimizerConfig:
        return optim.pistar_value_schedule(self.config.peak_lr, self.config.decay_lr, num_steps)

    def create_model(self) -> nnx.Module:
        """A freshly initialised model (traceable: the trainer draws it under jit, already split over its mesh)."""
        return self.config.create(self.config.seed)

    def initial_weights(self) -> initial_weights_lib.InitialWeights:
        """The initial weights, read here as host arrays in the model's dtypes (the bundles convert on the host),
        every parameter present: the bundle of $OPENPI_VLM_CKPT_DIR ("bundle"), a bundle directory, one of our
        runs or steps, a pistar checkpoint (local or gs://); none for random weights."""
        source = self.init if self.init is not None else self.config.init_weights
        if source is None:
            return initial_weights_lib.Host()
        path = epath.Path(source)  # local, or a bucket (gs://): pathlib would turn gs://b/x into gs:/b/x
        if source == "bundle":
            params = value_weights.load_params(self.config)
        elif checkpoints.is_run_dir(path) or (path / checkpoints.PARAMS_ITEM).is_dir():
            params = value_weights.load_params(self.config, checkpoint=checkpoints.params_dir(checkpoints.resolve(path)))
        elif (path / value_weights.GEMMA_SUBDIR).is_dir():
            params = value_weights.load_params(self.config, bundle_dir=path)
        else:
            params = value_weights.load_params(self.config, checkpoint=path, use_ema=True)
        return initial_weights_lib.Host(value_weights.checked_params(self.config, params))

    def check_init(self, flag: str = "--init") -> None:
        """Raise before training starts when the initial weights (`flag`, else the config's) are not there
        (`check_weights`); for the bundle ("bundle"), when $OPENPI_VLM_CKPT_DIR is unset or names no directory."""
        source, origin = _init_source(self.init, self.config.init_weights, self.config.name, "init_weights", flag)
        if source == "bundle":
            try:
                source = str(value_weights.resolve_bundle_dir(None))  # what initial_weights loads
            except FileNotFoundError as err:
                raise FileNotFoundError(f"{origin} is pistar's vlm_ckpt bundle, read from ${value_weights.BUNDLE_ENV_VAR}, "
                                        f"which is not set; set it to the bundle directory or pass {flag} (a bundle "
                                        "directory, a value run or checkpoint)") from err  # fmt: skip
            origin = f"${value_weights.BUNDLE_ENV_VAR} {source}"
        if source is not None:
            check_weights(source, origin, self.kind, f"; pass {flag} with the initial weights")

    def trainable(self) -> nnx.filterlib.Filter:
        return self.config.trainable_filter()

    def loss(self) -> step_lib.LossFn:
        return step_lib.value_loss(tuple(self.config.cameras), self.config.augment)

    def norm_groups(self) -> dict[str, nnx.filterlib.Filter]:
        """The kernel norms pistar's train_value.py logs, so its curves and ours compare: SigLIP, Gemma3, the
        heads (everything else) and the trainable weights."""
        towers = nnx.Any(value_lib.is_img_path, value_lib.is_llm_path)
        return {"siglip": value_lib.is_img_path, "llm": value_lib.is_llm_path, "head": nnx.Not(towers),
                "trainable": self.trainable()}  # fmt: skip

    def needs(self) -> samples.Needs:
        """What the sample maker reads from the dataset (checked before training)."""
        return samples.ValueSamples.requirements(self.config, self.cameras)

    def run_cameras(self) -> dict[str, str | None]:
        """The roles the config reads, as run.json records them: a role it takes no camera from is not the run's."""
        return {role: key for role, key in self.cameras.items() if samples.VALUE_SLOTS[role] in self.config.cameras}

    def sample_maker(self, ds: dataset_mod.Dataset) -> samples.SampleMaker:
        tok = value_tokenizer.ValueTokenizer(self.tokenizer_path, self.config.max_token_len)
        return samples.ValueSamples(self.config, tok, cameras=self.cameras)

    def params_item(self, graphdef: nnx.GraphDef, state: state_lib.TrainState) -> dict[str, Any]:
        """pistar's value checkpoint: {params, ema_params, step}."""
        raw = state_lib.full_params(graphdef, state)
        ema = state_lib.full_params(graphdef, state, ema=True)
        return {"params": raw, "ema_params": ema, "step": state.step}

    def assets(self, ds: dataset_mod.Dataset) -> dict[str, bytes]:
        return {checkpoints.TOKENIZER_FILE: self.tokenizer_path.read_bytes()}


def _init_source(init: str | None, default: str | None, name: str, field: str, flag: str) -> tuple[str | None, str]:
    """The initial weights a run starts from (`flag`, else the config's), and how to name them in an error."""
    if init is not None:
        return init, f"{flag} {init}"
    return default, f"{field} {default} of config {name!r}"


def check_weights(source: str, origin: str, kind: str, hint: str = "") -> None:
    """Raise FileNotFoundError when local initial weights do not exist or are a run without a finished checkpoint,
    ValueError when they are a run of another kind (a value run as a policy's init, say). A bucket is left to the
    workers: reading it here would need the workers' credentials."""
    if "://" in source:
        return
    path = epath.Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{origin}: no such file or directory (relative paths are taken from the current "
                                f"directory){hint}")  # fmt: skip
    if checkpoints.is_run_dir(path) or (path / checkpoints.PARAMS_ITEM).is_dir():
        try:
            step = checkpoints.resolve(path)
        except FileNotFoundError as err:  # a run that has saved no checkpoint yet
            raise FileNotFoundError(f"{origin}: {err}") from err
        other = (checkpoints.run_info(step) or {}).get("kind")
        if other not in (None, kind):
            raise ValueError(f"{origin}: a {other} run's checkpoint, not a {kind} run's; a {kind} run starts from "
                             f"{kind} weights")  # fmt: skip


def delta_action_stats(ds: dataset_mod.Dataset, horizon: int, delta: bool, adapt_to_pi: bool = False) -> dict[str, norm_stats_mod.NormStats]:  # fmt: skip
    """openpi's norm stats for a policy: state, and action chunks (made relative when `delta`) as trained
    (in pi0's space with `adapt_to_pi`, as openpi computes them after its Aloha input transform)."""
    running = {"state": norm_stats_mod.RunningStats(), "actions": norm_stats_mod.RunningStats()}
    for _, table in ds.iter_episode_tables():
        state = feats.column_to_numpy(table.column("observation.state")).astype(np.float32)
        actions = feats.column_to_numpy(table.column("action")).astype(np.float32)
        if adapt_to_pi:
            state, actions = trossen.state_to_pi(state), trossen.actions_to_pi(actions)
        rows = np.minimum(np.arange(len(actions))[:, None] + np.arange(horizon)[None], len(actions) - 1)
        chunks = actions[rows]  # (T, H, D): the training samples' action chunks, end padded as lerobot does
        if delta:
            chunks = transforms.DeltaActions()({"state": state, "actions": chunks})["actions"]
        running["state"].update(state)
        running["actions"].update(chunks.reshape(-1, chunks.shape[-1]))
    return {k: r.result() for k, r in running.items()}


def stats_provenance(config: policy_configs.PolicyConfig, name: str) -> dict[str, Any]:
    """What `delta_action_stats` computed for policy config `name`, as recorded in the norm_stats.json."""
    return {"actions": "delta_chunks" if config.use_delta_joint_actions else "chunks",
            "action_horizon": config.model.action_horizon, "adapt_to_pi": config.adapt_to_pi, "config": name}  # fmt: skip


def _space(adapt_to_pi: bool) -> str:
    return " in pi0's joint space (adapt_to_pi)" if adapt_to_pi else ""


def check_norm_stats(path: epath.PathLike, config: policy_configs.PolicyConfig, name: str, features: Mapping[str, dict]) -> None:
    """Refuse a norm_stats.json that is not policy config `name`'s training stats for this data: one we wrote for
    other actions (the stored columns, another horizon, absolute vs delta) or narrower than the dataset's vectors.
    A file without our marker (openpi's own, computed after its transforms) is taken as given."""
    stats = norm_stats_mod.load(path)
    marker = norm_stats_mod.computed_as(path)
    wanted = stats_provenance(config, name)
    if marker is not None and any(marker.get(k, False) != wanted[k] for k in ("actions", "action_horizon", "adapt_to_pi")):
        got = f"{marker.get('actions')} actions" + (f" of horizon {marker['action_horizon']}" if "action_horizon" in marker else "")
        raise ValueError(
            f"{path}: norm stats of {got}{_space(marker.get('adapt_to_pi', False))}, but config {name} trains on "
            f"{wanted['actions']} of horizon {wanted['action_horizon']}{_space(wanted['adapt_to_pi'])}; write its stats "
            f"with `python -m jobs.norm_stats --dataset D --config {name}`"
        )
    for key, column in (("state", "observation.state"), ("actions", "action")):
        width = list(features.get(column, {}).get("shape") or [])
        if key not in stats:
            raise ValueError(f"{path}: no norm stats for {key!r} (config {name} normalizes state and actions)")
        if len(width) == 1 and stats[key].mean.shape[-1] < width[0]:  # wider is fine: normalization takes the first dims
            raise ValueError(f"{path}: norm stats for {key!r} are {stats[key].mean.shape[-1]} wide, the dataset's {column!r} {width[0]}")


@dataclasses.dataclass
class PolicyTask:
    """pi0.6 fine-tuning: flow matching, adv_ind in the prompt with dropout, openpi's params/ out."""

    config: policy_configs.PolicyConfig
    tokenizer_path: epath.Path
    init: str | None  # overrides config.init_params when set ("none": random)
    norm_stats_path: epath.PathLike | None  # openpi norm_stats.json (local or gs://); None computes it from the dataset
    augment: bool = True
    cameras: Mapping[str, str | None] = dataclasses.field(default_factory=lambda: dict(samples.YAM_CAMERA_ROLES))  # role -> dataset camera  # fmt: skip

    kind = "policy"
    _norm_stats: Mapping[str, norm_stats_mod.NormStats] | None = None

    @property
    def ema_decay(self) -> float | None:
        return self.config.ema_decay

    @property
    def keep_period(self) -> int | None:
        """Checkpoints at multiples of this step are kept forever (openpi's keep_period)."""
        return self.config.keep_period

    def optimizer(self, num_steps: int) -> optim.OptimizerConfig:
        c = self.config
        return optim.OptimizerConfig(c.peak_lr, c.decay_lr, c.warmup_steps, c.decay_steps, c.b1, c.b2, c.eps,
                                     c.weight_decay, c.clip_gradient_norm)  # fmt: skip

    def create_model(self) -> nnx.Module:
        """A freshly initialised pi0.5, frozen (LoRA-run) leaves cast to bfloat16 as openpi's init_train_state does
        (traceable: the trainer draws it under jit, already split over its mesh)."""
        model = self.config.model.create(nnx.Rngs(jax.random.key(self.config.seed)))
        return state_lib.cast_frozen(model, self.config.model.frozen_filter())

    def initial_weights(self) -> initial_weights_lib.InitialWeights:
        """The initial weights, checked against the model but not read (each process reads its devices' shards):
        openpi params from an SFT/base `params/` dir or one of our runs or steps (local or gs://); none for random
        weights. LoRA leaves are absent from openpi's checkpoints and keep their init."""
        source = self.init if self.init is not None else self.config.init_params
        if source is None or source == "none":
            return initial_weights_lib.Host()
        path = epath.Path(source)
        if checkpoints.is_run_dir(path) or (path / checkpoints.PARAMS_ITEM).is_dir():
            source = str(checkpoints.params_dir(checkpoints.resolve(path)))
        return initial_weights_lib.Checkpoint.open(weights.model_params(nnx.eval_shape(self.create_model)), source)  # else: a params/ dir

    def check_init(self, flag: str = "--init") -> None:
        """Raise before training starts when the initial weights (`flag`, else the config's) are not there
        (`check_weights`)."""
        source, origin = _init_source(self.init, self.config.init_params, self.config.name, "init_params", flag)
        if source is not None and source != "none":
            check_weights(source, origin, self.kind, f"; pass {flag} with the initial weights (none: random ones)")

    def trainable(self) -> nnx.filterlib.Filter:
        return self.config.model.trainable_filter()

    def loss(self) -> step_lib.LossFn:
        return step_lib.policy_loss(self.augment)

    def norm_groups(self) -> dict[str, nnx.filterlib.Filter]:
        """None beyond openpi's param_norm (all weight matrices), which every run logs."""
        return {}

    def norm_stats(self, ds: dataset_mod.Dataset) -> Mapping[str, norm_stats_mod.NormStats]:
        if self._norm_stats is None:
            if self.norm_stats_path is not None:
                self._norm_stats = norm_stats_mod.load(self.norm_stats_path)
            else:
                self._norm_stats = delta_action_stats(ds, self.config.model.action_horizon, self.config.use_delta_joint_actions,
                                                      self.config.adapt_to_pi)  # fmt: skip
        return self._norm_stats

    def needs(self) -> samples.Needs:
        """What the sample maker reads from the dataset (checked before training and before the norm stats)."""
        return samples.PolicySamples.requirements(self.config, self.cameras)

    def run_cameras(self) -> dict[str, str | None]:
        """Every role, as run.json records them (the policy takes all three; None: masked)."""
        return dict(self.cameras)

    def sample_maker(self, ds: dataset_mod.Dataset) -> samples.SampleMaker:
        tok = tokenizer_mod.PromptTokenizer(self.tokenizer_path, self.config.model.max_token_len)
        return samples.PolicySamples(self.config, self.norm_stats(ds), tok, cameras=self.cameras)

    def params_item(self, graphdef: nnx.GraphDef, state: state_lib.TrainState) -> dict[str, Any]:
        """openpi's params/ item: the EMA weights when the run keeps them, as openpi saves."""
        return weights.openpi_item(state_lib.full_params(graphdef, state, ema=True))

    def assets(self, ds: dataset_mod.Dataset) -> dict[str, bytes]:
        """Norm stats in openpi's assets/<asset_id>/ layout, and the tokenizer."""
        return {
            f"{self.config.asset_id}/{checkpoints.NORM_STATS_FILE}": norm_stats_mod.dumps(dict(self.norm_stats(ds))).encode(),
            checkpoints.TOKENIZER_FILE: self.tokenizer_path.read_bytes(),
        }


Task = ValueTask | PolicyTask
