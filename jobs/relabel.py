"""python -m jobs.relabel --dataset D --value-ckpt C --output O --lookahead 50 --positive-ratio 0.3 [--num-actors N --gpus-per-actor G --batch-size B]

Relabel a dataset with a trained value model: V per frame by Ray Data inference over GPU actors,
N-step advantages, a percentile threshold over autonomous frames (per task by default; `--compat
pistar` reproduces pistar's labels: bootstrap 0 past the end, one global threshold), interventions
positive. Writes O as a new version with `adv_ind` relabelled and `value`, `advantage` kept; plots
and TensorBoard under `O.relabel/` (or `--log-dir`). Resumable: finished episodes' values are kept
in `O.relabel/work/` and a rerun infers only the rest. Submit to a cluster with
`ray job submit --working-dir . -- python -m jobs.relabel ...` (paths must be shared storage).
`--value-ckpt` is a training run directory (its latest checkpoint) or one checkpoint directory,
local or in a bucket (gs://bucket/run: the value actors read it there).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Literal

import jax.numpy as jnp
import tqdm
from etils import epath

from actors import relabel as relabel_actors
from actors import relabel_output, relabel_store
from jobs import cli
from recap_ray import checks
from recap_ray.configs import registry
from recap_ray.data import dataset as dataset_mod
from recap_ray.data import versions
from recap_ray.models import checkpoints, value_config
from recap_ray.recap import advantage, relabel, threshold

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: Path
    """Source dataset with the RECAP columns (only read)."""
    value_ckpt: str
    """Value training run directory (latest checkpoint) or one checkpoint (step) directory; local or gs://."""
    output: Path
    """New dataset version; must not exist."""
    lookahead: int = 50
    """N of the N-step advantage."""
    positive_ratio: float = 0.3
    """Share of autonomous frames labelled positive (ties go positive)."""
    threshold_scope: Literal["task", "global"] | None = None
    """One threshold per task or one global; default per task, global under --compat pistar."""
    compat: Literal["recap", "pistar"] = "recap"
    """recap: a failure is charged past the episode's end; pistar: bootstrap 0, pistar's labels exactly."""
    stop_at_intervention: bool = False
    """End an autonomous frame's window where the operator next takes over (not credit it with the correction)."""
    num_actors: int = 1
    """Value actors (GPU model replicas)."""
    gpus_per_actor: float | None = None
    """GPUs per actor; default 1 when the cluster has GPUs, else 0 (CPU)."""
    batch_size: int = 64
    """Frames per model call; episodes are cut in chunks of this size, padded."""
    config: str | None = None
    """Registered value-model config; default the checkpoint's run.json."""
    tokenizer: str | None = None
    """Sentencepiece model, local or gs://; default the checkpoint's assets/tokenizer.model."""
    use_ema: bool = True
    """Use the checkpoint's EMA params."""
    dtype: str | None = "bfloat16"
    """Inference dtype; None for pistar's mixed precision (f32 Gemma, bf16 SigLIP)."""
    base_camera: str = "observation.images.head_camera"
    """Dataset camera fed as base_0_rgb (all three left at their defaults: the value run's, from its run.json)."""
    wrist_camera: str | None = "observation.images.left_wrist_camera"
    """Dataset camera fed as wrist_0_rgb (None: masked, as pistar without a wrist image)."""
    right_wrist_camera: str | None = None
    """Dataset camera fed as right_wrist_0_rgb, for configs with that camera."""
    log_dir: Path | None = None
    """Plots and TensorBoard; default <output>.relabel."""
    plot_episodes: int = 6
    """Episodes whose value curves are plotted."""
    keep_work: bool = False
    """Keep the per-episode values in <output>.relabel/work after publishing."""

    def __post_init__(self) -> None:
        """Numbers that cannot be meant, refused as the command line is parsed (before Ray starts)."""
        checks.at_least(self, num_actors=1, batch_size=1, gpus_per_actor=0, plot_episodes=0)
        if self.dtype is not None:
            try:
                floating = jnp.issubdtype(jnp.dtype(self.dtype), jnp.floating)
            except TypeError:
                floating = False
            if not floating:
                raise ValueError(f"--dtype {self.dtype!r} is not a floating-point dtype; give bfloat16, float32 or "
                                 "None (pistar's mixed precision)")  # fmt: skip


def fixed_cluster() -> bool:
    """Whether the Ray this job uses cannot grow: the embedded one `cli.connect_ray` starts (no $RAY_ADDRESS, no autoscaler)."""
    return not os.environ.get("RAY_ADDRESS")


def settings(lookahead: int, positive_ratio: float, compat: str, scope: str | None,
             stop_at_intervention: bool = False) -> relabel.Settings:
    """Labelling settings; the scope defaults to pistar's global under compat pistar, else per task."""
    if compat not in advantage.RULES:
        raise ValueError(f"--compat {compat!r} not in {advantage.RULES}")
    if scope is not None and scope not in threshold.SCOPES:
        raise ValueError(f"unknown threshold scope {scope!r}; expected one of {threshold.SCOPES}")
    if lookahead < 1:
        raise ValueError(f"--lookahead must be >= 1, got {lookahead}")
    threshold.percent(positive_ratio)  # range check before any work
    return relabel.Settings(lookahead, positive_ratio, compat, scope or ("global" if compat == "pistar" else "task"),
                            stop_at_intervention)  # fmt: skip


def resolve_checkpoint(config: Config) -> tuple[epath.Path, str, epath.Path | None]:
    """(step dir, value config name, tokenizer) of `--value-ckpt`, each local or in a bucket."""
    step = checkpoints.resolve(config.value_ckpt)
    info = checkpoints.run_info(step) or {}
    if info.get("kind") not in (None, "value"):
        raise ValueError(f"--value-ckpt {config.value_ckpt}: a {info['kind']} run's checkpoint ({step}); relabel needs a "
                         "value run (jobs.train_value)")  # fmt: skip
    name = config.config or info.get("config")
    if name is None:
        raise ValueError(f"{step}: a loose checkpoint (no run.json); pass --config with its value-model config")
    registry.get(name, value_config.ValueModelConfig)
    tokenizer = None if config.tokenizer is None else epath.Path(config.tokenizer)
    if tokenizer is not None and not tokenizer.is_file():
        raise FileNotFoundError(f"--tokenizer {tokenizer}: no such file (a sentencepiece .model; default the "
                                "checkpoint's assets/tokenizer.model)")  # fmt: skip
    if tokenizer is None and checkpoints.tokenizer_file(step).is_file():
        tokenizer = checkpoints.tokenizer_file(step)
    return step, name, tokenizer


_CAMERA_FLAGS = {"base_camera": "base", "wrist_camera": "wrist", "right_wrist_camera": "right_wrist"}  # flag -> training role


def with_run_cameras(config: Config, step: epath.Path, name: str) -> Config:
    """`config` with the cameras the value run was trained on (run.json's `cameras`, from its `--cameras`) when
    the camera flags are all left at their defaults; the right wrist only for a value config that takes it."""
    defaults = {f.name: f.default for f in dataclasses.fields(Config) if f.name in _CAMERA_FLAGS}
    recorded = (checkpoints.run_info(step) or {}).get("cameras") or {}
    if not recorded or any(getattr(config, flag) != default for flag, default in defaults.items()):
        return config
    takes_right = "right_wrist_0_rgb" in registry.get(name).cameras
    chosen = {flag: recorded.get(role, getattr(config, flag)) for flag, role in _CAMERA_FLAGS.items()
              if flag != "right_wrist_camera" or takes_right}  # fmt: skip
    return dataclasses.replace(config, **chosen)


def inference_spec(config: Config, params: epath.PathLike, name: str,
                   tokenizer: epath.PathLike | None) -> relabel_actors.InferenceSpec:
    """What every decode task and value actor is given."""
    model_cameras = registry.get(name).cameras
    mapping = {"base_0_rgb": config.base_camera, "wrist_0_rgb": config.wrist_camera, "right_wrist_0_rgb": config.right_wrist_camera}
    cameras = tuple((c, mapping[c]) for c in model_cameras if mapping.get(c) is not None)
    extra = [c for c, key in mapping.items() if key is not None and c not in model_cameras]
    if extra or not cameras:
        raise ValueError(f"value config {name!r} takes cameras {model_cameras}; cannot feed {extra or 'none'}")
    with dataset_mod.open(config.dataset) as ds:
        unknown = [key for _, key in cameras if key not in ds.meta.features]
        if unknown:
            raise ValueError(f"{config.dataset}: no camera {unknown}; cameras are {ds.meta.video_keys} "
                             "(--base-camera, --wrist-camera, --right-wrist-camera)")
    return relabel_actors.InferenceSpec(
        dataset=str(config.dataset.resolve()), config=name, params=str(checkpoints.absolute(params)),
        tokenizer=None if tokenizer is None else str(checkpoints.absolute(tokenizer)),
        cameras=cameras, batch_size=config.batch_size, dtype=config.dtype, use_ema=config.use_ema,
    )  # fmt: skip


def resources(config: Config) -> relabel_actors.Resources:
    gpus = config.gpus_per_actor
    if gpus is None:
        import ray

        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return relabel_actors.Resources(num_actors=config.num_actors, gpus_per_actor=gpus)


def infer_values(config: Config, spec: relabel_actors.InferenceSpec, store: relabel_store.ValueStore) -> None:
    """Values of every episode not yet in `store`, saved as each episode completes."""
    with dataset_mod.open(config.dataset) as ds:
        lengths = [(ep.index, ep.length) for ep in ds.meta.episodes]
    todo = [(e, n) for e, n in lengths if not store.has(e, n)]
    done = sum(n for _, n in lengths) - sum(n for _, n in todo)
    logger.info("relabel: %d of %d episodes to infer (%d frames already done)", len(todo), len(lengths), done)
    if not todo:
        return
    cli.connect_ray()
    with tqdm.tqdm(total=sum(n for _, n in lengths), initial=done, unit="frame", desc="value inference") as bar:
        for e, values in relabel_actors.infer(spec, todo, resources(config), fixed_cluster=fixed_cluster()):
            store.save(e, values)
            bar.update(values.size)


def main(config: Config) -> Path:
    """Infer (or reuse) values, label, publish the new version; returns its path."""
    if config.output.exists():
        left = None if config.keep_work else relabel_store.drop_published_work(config.output)
        note = f" (removed {left}, which the relabel that published it left behind)" if left else ""
        raise FileExistsError(f"{config.output}: already exists; versions are never overwritten{note}")
    labelling = settings(config.lookahead, config.positive_ratio, config.compat, config.threshold_scope,
                         config.stop_at_intervention)  # fmt: skip
    step, name, tokenizer = resolve_checkpoint(config)
    config = with_run_cameras(config, step, name)
    params = checkpoints.params_dir(step)
    spec = inference_spec(config, params, name, tokenizer)
    with dataset_mod.open(config.dataset) as ds:
        relabel_output.check_source(ds)  # before inference, not after it
    parts = {
        "source": versions.fingerprint(config.dataset),
        "checkpoint": relabel_store.tree_key(params),
        "tokenizer": None if tokenizer is None else relabel_store.tree_key(tokenizer),
        **{k: v for k, v in dataclasses.asdict(spec).items() if k not in ("dataset", "params", "tokenizer")},
    }
    store = relabel_store.ValueStore(config.output, relabel_store.work_key(parts), parts)
    infer_values(config, spec, store)
    with dataset_mod.open(config.dataset) as ds:
        values = {ep.index: store.load(ep.index) for ep in ds.meta.episodes}
    lineage = {
        "value_checkpoint": str(checkpoints.absolute(step)),
        "value_checkpoint_key": parts["checkpoint"],
        "value_config": name,
        "use_ema": config.use_ema,
        "dtype": config.dtype,
        "batch_size": config.batch_size,
        "cameras": dict(spec.cameras),
    }
    log_dir = config.log_dir or relabel_store.side_dir(config.output)
    out, _ = relabel_output.publish(config.dataset, config.output, values, labelling, lineage, log_dir, config.plot_episodes)
    if not config.keep_work:
        store.remove()
    logger.info("relabelled %s -> %s", config.dataset, out)
    return out


if __name__ == "__main__":
    print(main(cli.parse(Config, __doc__)))
