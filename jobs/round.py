"""python -m jobs.round --config ROUND.yaml --output DIR   (or: --demo | --experiment --output DIR)

One RECAP round: data (merge new rollouts with the previous round's data, add the RECAP columns),
on the simulated task optionally DAgger rollouts of the served init policy with the simulated
operator's corrections (`collect_rollouts`), value model, relabel, policy fine-tune (from the SFT
checkpoint or the previous round's policy), then serve the policy and evaluate it in closed loop
on the simulated task. Stages are recorded in DIR/round.json; a crashed round resumes from the
last finished stage; every stage writes new directories under DIR and never touches its inputs.
`skip_value: true` trains on the labels the data already carries (pistar's Stage 3: interventions
positive, the rest none), the right first round on small data. `value_scale: task` adds a `targets`
stage before the value model: the RECAP columns recomputed on the task's steps-to-success scale. `--demo` generates the simulated
task's data and runs every stage with tiny models on a local Ray, including an SFT baseline, and
ends with the success-rate table; `--experiment` is the same at the size of BENCHMARKS.md
"RECAP vs SFT", with the served SFT policy's corrected rollouts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from jobs import cli, collect, evaluate, merge, prepare, relabel, round_checks, serve, train_policy, train_value, training
from recap_ray import checks
from recap_ray import manifest as manifest_lib
from recap_ray.configs import registry
from recap_ray.data import dataset as dataset_mod
from recap_ray.data import prepare as prepare_lib
from recap_ray.data import recap_columns
from recap_ray.serve import app_config
from recap_ray.sim import session, world

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RoundConfig:
    """What one round does; the YAML file holds these fields.

    Path fields (PATH_FIELDS) are made absolute against the current directory when the config is built, so
    round.json records paths that a next round run from any directory can use (URIs such as gs://... are kept).
    """

    sources: tuple[str, ...] = ()  # new LeRobot datasets (rollouts with corrections) for this round
    previous_round: str | None = None  # previous round's DIR: its data (collected rollouts too) is merged in, its policy is the init
    sft_checkpoint: str | None = None  # initial policy when there is no previous round (openpi params/ or a run)
    policy_config: str = "pi06_yam_vial_30fps_lora_from_sft_recap"  # registered policy config
    value_config: str = "value"  # registered value-model config
    tokenizer: str | None = None  # PaliGemma sentencepiece model for the policy
    value_tokenizer: str | None = None  # Gemma3 sentencepiece model for the value model
    value_init: str | None = None  # value model's initial weights (pistar's vlm_ckpt bundle dir; default the config's: $OPENPI_VLM_CKPT_DIR)
    skip_value: bool = False  # train on the data's own labels (no value model, no relabel)
    collect_rollouts: int = 0  # simulated task: DAgger rollouts of the served init policy with corrections, merged in
    collect_seed: int | None = None  # seed of those rollouts (rollout i starts from (seed, 3, i)); default the round's place in its chain (0, 1, ...): new start states each round
    value_steps: int | None = None  # default: the config's
    policy_steps: int | None = None  # default: the config's
    sft_steps: int | None = None  # steps of the SFT baseline a simulated round trains first (default: policy_steps)
    sft_config: str | None = None  # registered policy config of that SFT baseline (default: policy_config)
    batch_size: int | None = None  # global batch of both trainings (default: the configs')
    cameras: tuple[str, ...] = ()  # dataset cameras as ROLE=KEY (roles base, wrist, right_wrist) for both trainings and relabel; default YAM's
    value_scale: prepare_lib.ValueScale = "episode"  # value targets: steps over each episode's length, or its task's longest
    success_file: str | None = None  # data stage: jobs.prepare --success-file for `sources` (episode indices of the sources merged in order); relative: to the current directory
    success_column: str | None = None  # data stage: per-frame column (e.g. next.success) whose last frame is the episode's success
    default_success: prepare_lib.DefaultSuccess = "failure"  # data stage: episodes with no success flag (failure | success | error)
    intervention_column: str = "intervention"  # data stage: per-frame bool/0-1 column copied into `intervention`
    lookahead: int = 50  # N of the N-step advantage
    stop_at_intervention: bool = False  # autonomous advantage windows end where the operator next takes over
    positive_ratio: float = 0.3  # fraction of autonomous frames labelled positive
    num_workers: int = 1  # training workers (hosts); the most when elastic
    min_workers: int | None = None  # elastic training: fewest workers a training stage continues on after losing nodes (spot)
    max_failures: int = 3  # worker-group restarts a training stage makes before failing (-1: unlimited)
    gpus_per_worker: int = 0  # GPUs per training worker
    cpus_per_worker: float = 1.0  # CPUs reserved per training worker: its loader's decode threads (at least 4)
    num_actors: int = 1  # value-inference actors
    gpus_per_actor: float | None = None  # GPUs per actor
    eval_episodes: int = 0  # closed-loop episodes on the simulated task (0: no evaluation)
    eval_baseline: str | None = None  # checkpoint evaluated beside the new policy (default: the init policy)
    cfg_beta: float | None = None  # classifier-free guidance of the served policies (collection and evaluation)
    serve_port: int = 8000  # port of the collection and evaluation endpoints (may change when resuming)
    task: world.TaskConfig = world.TaskConfig()  # simulated task of the collect and evaluate stages
    dagger: session.DaggerConfig = session.DaggerConfig()  # simulated operator of the collect stage

    def __post_init__(self) -> None:
        checks.at_least(self, lookahead=1, num_workers=1, min_workers=1, max_failures=-1, gpus_per_worker=0, cpus_per_worker=0,
                        num_actors=1, gpus_per_actor=0, batch_size=1, value_steps=1, policy_steps=1, sft_steps=1,
                        eval_episodes=0, collect_rollouts=0, collect_seed=0)  # fmt: skip
        if self.min_workers is not None and self.min_workers > self.num_workers:
            raise ValueError(f"min_workers {self.min_workers} exceeds num_workers {self.num_workers} (the most workers)")
        if not 0 < self.positive_ratio <= 1:
            raise ValueError(f"positive_ratio (the share of autonomous frames labelled positive) must be in (0, 1], "
                             f"got {self.positive_ratio}")  # fmt: skip
        if self.value_scale not in prepare_lib.VALUE_SCALES:
            raise ValueError(f"value_scale {self.value_scale!r} is not one of {prepare_lib.VALUE_SCALES}")
        if self.default_success not in prepare_lib.DEFAULT_SUCCESSES:
            raise ValueError(f"default_success {self.default_success!r} is not one of {prepare_lib.DEFAULT_SUCCESSES}")
        for name in PATH_FIELDS:
            value = getattr(self, name)
            if value in INIT_KEYWORDS.get(name, ()):
                continue
            if isinstance(value, tuple):
                object.__setattr__(self, name, tuple(_absolute(v) for v in value))
            elif value is not None:
                object.__setattr__(self, name, _absolute(value))

    @classmethod
    def from_yaml(cls, path: Path) -> "RoundConfig":
        if not path.is_file():
            raise FileNotFoundError(f"--config {path}: no such file (a round's YAML, fields of RoundConfig)")
        raw = yaml.safe_load(path.read_text()) or {}
        raw = _fields(cls, raw, str(path))
        if "sources" in raw:
            if not isinstance(raw["sources"], list):
                raise ValueError(f"{path}: sources must be a list of dataset paths, got {raw['sources']!r}")
            raw["sources"] = tuple(raw["sources"])
        for name, kind in (("task", world.TaskConfig), ("dagger", session.DaggerConfig)):
            if name in raw:
                fields = _fields(kind, raw[name] or {}, f"{path}: {name}")
                raw[name] = kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        try:
            return cls(**raw)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


PATH_FIELDS = ("sources", "previous_round", "sft_checkpoint", "tokenizer", "value_tokenizer", "value_init", "eval_baseline",
               "success_file")  # fmt: skip
# Fields a resumed round may change: where it serves, and how its training stages weather lost nodes (neither
# changes a stage's result). round.json keeps the rest and refuses a resume that changes them.
RESUME_MAY_CHANGE = ("serve_port", "min_workers", "max_failures")
# Initial-weight fields' keywords, kept as they are (as the training jobs' --init takes them): the pistar bundle of
# $OPENPI_VLM_CKPT_DIR, and random weights.
INIT_KEYWORDS = {"value_init": ("bundle",), "sft_checkpoint": ("none",)}


def _absolute(path: str) -> str:
    """`path` made absolute against the current directory; a URI (scheme://...) as it is."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def _fields(cls: type, raw: Any, where: str) -> dict[str, Any]:
    """`raw` if it is a mapping of `cls`'s field names, else a ValueError naming `where` and the bad keys."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
    return dict(raw)


@dataclasses.dataclass(frozen=True)
class Config:
    output: Path
    """Round directory (round.json and every stage's outputs)."""
    config: Path | None = None
    """Round YAML (fields of RoundConfig)."""
    demo: bool = False
    """Generate the simulated task's data and run a whole round with tiny models, SFT vs RECAP."""
    experiment: bool = False
    """The simulated round of BENCHMARKS.md "RECAP vs SFT": SFT, its served rollouts with corrections, RECAP; ~1 h on CPU."""
    serve_port: int | None = None
    """--demo / --experiment: port of the collection and evaluation endpoints (default 8000)."""


def _has_recap_columns(path: Path) -> bool:
    with dataset_mod.open(path) as ds:
        return all(c in ds.features for c in recap_columns.COLUMNS)


def previous_output(previous_round: str, stages: tuple[str, ...], key: str) -> str:
    """Output `key` of the first of `stages` the round in `previous_round` ran (else the last), which must be done."""
    recorded = recorded_round(previous_round)["stages"]
    stage = next((s for s in stages if s in recorded), stages[-1])
    entry = recorded.get(stage, {"status": manifest_lib.PENDING})
    if entry["status"] != manifest_lib.DONE:
        raise ValueError(f"previous_round {previous_round}: its {stage!r} stage is {entry['status']}, not done; "
                         "finish that round first")  # fmt: skip
    return entry["outputs"][key]


def chain_position(rc: RoundConfig) -> int:
    """How many rounds precede this one through `previous_round` links (0 for a first round)."""
    seen: list[str] = []
    previous = rc.previous_round
    while previous:
        if str(Path(previous).resolve()) in seen:
            raise ValueError(f"previous_round links loop: {' -> '.join(seen)} -> {previous}")
        seen.append(str(Path(previous).resolve()))
        previous = recorded_round(previous)["config"].get("previous_round")
    return len(seen)


def recorded_round(round_dir: str) -> dict[str, Any]:
    """What a previous round's round.json records (its config and stages)."""
    path = Path(round_dir) / manifest_lib.FILE
    if not path.is_file():
        raise FileNotFoundError(f"previous_round {round_dir}: no {manifest_lib.FILE}, not a round directory")
    return json.loads(path.read_text())


def _fresh(path: Path) -> Path:
    """`path`, with what an unfinished attempt of its stage left there removed: a rerun stage starts from its inputs."""
    if path.exists():
        logger.warning("removing %s, left by an unfinished attempt of its stage", path)
        shutil.rmtree(path)
    return path


def data_stage(rc: RoundConfig, out: Path) -> dict[str, Any]:
    """The round's data: its `sources` merged and, when they lack the RECAP columns or the round sets labels,
    prepared with the round's labelling fields; then merged after the previous round's data (already prepared)."""
    sources = [Path(s) for s in rc.sources]
    datasets = [Path(previous_output(rc.previous_round, ("collect", "data"), "dataset"))] if rc.previous_round else []  # rollouts included
    if not sources and not datasets:
        raise ValueError("a round needs data: set `sources` or `previous_round`")
    if sources:
        new = sources[0] if len(sources) == 1 else merge.main(merge.Config(sources=tuple(sources), output=_fresh(out / "data_merged")))
        labelling = rc.success_file or rc.success_column or rc.intervention_column != "intervention"
        if labelling or not _has_recap_columns(new):  # labels the round sets are applied even to prepared data
            new = prepare.main(prepare.Config(input=new, output=_fresh(out / "data"),
                                              success_file=Path(rc.success_file) if rc.success_file else None,
                                              success_column=rc.success_column, default_success=rc.default_success,
                                              intervention_column=rc.intervention_column))  # fmt: skip
        datasets.append(new)
    dataset = datasets[0] if len(datasets) == 1 else merge.main(merge.Config(sources=tuple(datasets), output=_fresh(out / "data_all")))
    return {"outputs": {"dataset": os.path.abspath(dataset)}}


def targets_stage(rc: RoundConfig, dataset: str, out: Path) -> dict[str, Any]:
    """The RECAP columns recomputed on the round's value scale (a new version; adv_ind back to the data's labels)."""
    return {"outputs": {"dataset": str(prepare.main(prepare.Config(input=Path(dataset), output=_fresh(out),
                                                                 value_scale=rc.value_scale)))}}  # fmt: skip


def train_stage(kind: str, rc: RoundConfig, dataset: str, run_dir: Path, init: str | None,
                steps: int | None = None, config_name: str | None = None) -> dict[str, Any]:
    """Train the value model or the policy; `steps` and `config_name` override the round's step count and config.

    A run an unfinished attempt left in `run_dir` is resumed from its newest checkpoint (the training job refuses
    one of another kind, config or dataset).
    """
    common = dict(dataset=Path(dataset), run_dir=str(run_dir), num_workers=rc.num_workers, min_workers=rc.min_workers,
                  max_failures=rc.max_failures, gpus_per_worker=rc.gpus_per_worker, cpus_per_worker=rc.cpus_per_worker,
                  batch_size=rc.batch_size, init=init, resume=True, cameras=tuple(rc.cameras))  # fmt: skip
    if kind == "value":
        config = training.Config(config=rc.value_config, tokenizer=rc.value_tokenizer,
                                 num_steps=steps or rc.value_steps, **common)  # fmt: skip
        record = train_value.main(config)
    else:
        config = train_policy.Config(config=config_name or rc.policy_config, tokenizer=rc.tokenizer,
                                     num_steps=steps or rc.policy_steps, **common)  # fmt: skip
        record = train_policy.main(config)
    return {"outputs": {"run_dir": str(run_dir)}, "checkpoints": record["checkpoints"], "metrics": record.get("metrics", {})}


def relabel_stage(rc: RoundConfig, dataset: str, value_run: str, out: Path) -> dict[str, Any]:
    result = relabel.main(relabel.Config(dataset=Path(dataset), value_ckpt=value_run, output=_fresh(out),
                                         lookahead=rc.lookahead, positive_ratio=rc.positive_ratio,
                                         stop_at_intervention=rc.stop_at_intervention, num_actors=rc.num_actors,
                                         gpus_per_actor=rc.gpus_per_actor, dtype=None,
                                         **training.relabel_cameras(tuple(rc.cameras))))  # fmt: skip
    return {"outputs": {"dataset": str(result)}}


@contextlib.contextmanager
def served(rc: RoundConfig, checkpoint: str, name: str) -> Iterator[str]:
    """Serve `checkpoint` on the local Ray for the duration of the block; yields the websocket URI."""
    from ray import serve as ray_serve

    app = app_config.AppConfig(checkpoint=checkpoint, config=rc.policy_config + "_infer", num_gpus=min(rc.gpus_per_worker, 1),
                               tokenizer=rc.tokenizer, cfg_beta=rc.cfg_beta)  # fmt: skip
    uri, metadata = serve.start(serve.Config(app=app, port=rc.serve_port, name=name))
    try:
        answered = Path(str(metadata.get("checkpoint", "")))
        if not answered.resolve().is_relative_to(Path(checkpoint).resolve()):
            raise RuntimeError(f"{uri} answers for checkpoint {str(answered)!r}, not {checkpoint!r}: another server "
                               "holds the port; set a free serve_port")  # fmt: skip
        yield uri
    finally:
        ray_serve.shutdown()


def collect_stage(rc: RoundConfig, dataset: str, policy: str, seed: int, out: Path) -> dict[str, Any]:
    """DAgger rollouts of the served `policy` with the simulated operator's corrections, merged into `dataset`."""
    with served(rc, policy, "collect") as uri:
        rollouts = collect.main(collect.Config(endpoint=uri, output=_fresh(out / "rollouts"), rollouts=rc.collect_rollouts,
                                               seed=seed, task=rc.task, dagger=rc.dagger))  # fmt: skip
    merged = merge.main(merge.Config(sources=(Path(dataset), rollouts), output=_fresh(out / "data_collected")))
    return {"outputs": {"rollouts": str(rollouts), "dataset": str(merged)}}


def evaluate_stage(rc: RoundConfig, policies: dict[str, str], out: Path) -> dict[str, Any]:
    """Serve each policy in turn on the local Ray and run the simulated task through the websocket."""
    horizon = registry.get(rc.policy_config + "_infer").model.action_horizon
    metrics: dict[str, Any] = {}
    for label, checkpoint in policies.items():
        with served(rc, checkpoint, f"eval-{label}") as uri:
            summary = evaluate.main(evaluate.Config(endpoint=uri, episodes=rc.eval_episodes, output=out / label,
                                                    horizon=horizon, video_episodes=1, task=rc.task))  # fmt: skip
        metrics[label] = {k: summary[k] for k in ("success_rate", "success_rate_ci95", "episodes", "successes")}
    return {"outputs": {"evaluation": str(out)}, "metrics": metrics}


def run_round(rc: RoundConfig, out: Path, *, sft_stage: bool = False) -> dict[str, Any]:
    """Run (or resume) the round's stages in order; returns round.json's contents.

    A round building on another without `cameras` of its own takes the previous round's.
    """
    if rc.previous_round and not rc.cameras:
        rc = dataclasses.replace(rc, cameras=tuple(recorded_round(rc.previous_round)["config"].get("cameras", ())))
    round_checks.check(rc, sft_stage)  # before round.json: a config refused here may be fixed and rerun into the same DIR
    m = manifest_lib.Manifest(out, {k: v for k, v in dataclasses.asdict(rc).items() if k not in RESUME_MAY_CHANGE})
    init = rc.sft_checkpoint
    if rc.previous_round:  # looked up before any stage runs: an unfinished previous round is refused here
        init = previous_output(rc.previous_round, ("policy",), "run_dir")
    data = m.run("data", {"sources": list(rc.sources), "previous_round": rc.previous_round}, "merge + prepare",
                 lambda: data_stage(rc, out))["outputs"]["dataset"]  # fmt: skip
    if sft_stage:  # demo: the SFT baseline is trained here, on the data's own labels
        sft_config = rc.sft_config or rc.policy_config
        sft = m.run("sft", {"dataset": data}, f"jobs.train_policy --config {sft_config} (data labels)",
                    lambda: train_stage("policy", rc, data, out / "sft", init, rc.sft_steps, sft_config))  # fmt: skip
        init = sft["outputs"]["run_dir"]
    if rc.collect_rollouts:
        if init is None:
            raise ValueError("collect_rollouts needs a policy to drive: set sft_checkpoint or previous_round")
        seed = rc.collect_seed if rc.collect_seed is not None else chain_position(rc)
        data = m.run("collect", {"dataset": data, "policy": init, "seed": seed},
                     f"jobs.serve + jobs.collect --rollouts {rc.collect_rollouts} --seed {seed} + jobs.merge",
                     lambda: collect_stage(rc, data, init, seed, out))["outputs"]["dataset"]  # fmt: skip
    policy_data = data
    if not rc.skip_value:
        if rc.value_scale != "episode":
            data = m.run("targets", {"dataset": data}, f"jobs.prepare --value-scale {rc.value_scale}",
                         lambda: targets_stage(rc, data, out / "data_targets"))["outputs"]["dataset"]  # fmt: skip
        value = m.run("value", {"dataset": data}, f"jobs.train_value --config {rc.value_config}",
                      lambda: train_stage("value", rc, data, out / "value", rc.value_init))["outputs"]["run_dir"]  # fmt: skip
        policy_data = m.run("relabel", {"dataset": data, "value_ckpt": value},
                            f"jobs.relabel --lookahead {rc.lookahead} --positive-ratio {rc.positive_ratio}"
                            + (" --stop-at-intervention" if rc.stop_at_intervention else ""),
                            lambda: relabel_stage(rc, data, value, out / "relabeled"))["outputs"]["dataset"]  # fmt: skip
    policy = m.run("policy", {"dataset": policy_data, "init": init}, f"jobs.train_policy --config {rc.policy_config}",
                   lambda: train_stage("policy", rc, policy_data, out / "policy", init))["outputs"]["run_dir"]  # fmt: skip
    if rc.eval_episodes:
        policies = {"recap": policy}
        baseline = rc.eval_baseline or init
        if baseline:
            policies = {"baseline": baseline, **policies}
        # resumable: an evaluation resumes the episodes it finds, and refuses those of a retrained policy
        m.run("evaluate", {"policies": policies}, f"jobs.serve + jobs.evaluate --episodes {rc.eval_episodes}",
              lambda: evaluate_stage(rc, policies, out / "evaluation"), resumable=out / "evaluation")  # fmt: skip
    return m.data


def main(config: Config) -> dict[str, Any]:
    if config.demo and config.experiment:
        raise ValueError("--demo and --experiment exclude each other")
    output = Path(os.path.abspath(config.output))  # outputs in round.json: absolute, without `..`
    if config.demo or config.experiment:
        from jobs import sim_round  # it builds on this module

        return sim_round.simulated(output, sim_round.EXPERIMENT if config.experiment else sim_round.DEMO, config.serve_port)
    if config.config is None:
        raise ValueError("pass --config ROUND.yaml, --demo or --experiment")
    record = run_round(RoundConfig.from_yaml(config.config), output)
    print(summary(record))
    return record


def summary(record: dict[str, Any]) -> str:
    """One line a stage (status, seconds, outputs), then where the manifest is."""
    lines = [f"{name:9} {entry['status']:7} {entry.get('seconds', 0):8.1f} s  " + "  ".join(f"{k}: {v}" for k, v in entry.get("outputs", {}).items())
             for name, entry in record["stages"].items()]  # fmt: skip
    return "\n".join([*lines, f"round manifest: {Path(record['round']) / manifest_lib.FILE}"])


if __name__ == "__main__":
    main(cli.parse(Config, __doc__))
