"""What a round checks in its config before its first stage (`check`), so that a mistake in its YAML costs
seconds, not the stages that run before the one reading the field."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from etils import epath

from jobs import training
from recap_ray.configs import registry
from recap_ray.data import dataset as dataset_mod
from recap_ray.train import loop, tasks

if TYPE_CHECKING:
    from jobs.round import RoundConfig


@contextlib.contextmanager
def _field(name: str) -> Iterator[None]:
    """Errors raised in the block, prefixed with the round config field they are about."""
    try:
        yield
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{name}: {err}") from err
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err


def check(rc: RoundConfig, sft_stage: bool = False) -> None:
    """What a round checks before its first stage, so that a mistake in its YAML costs seconds, not the stages run
    before the one that reads the field: the configs (registered, of their kind), the tokenizers, the cameras, the
    sources (LeRobot datasets), the success file and the initial weights that are local paths."""
    with _field("policy_config"):
        loop.config_for("policy", rc.policy_config)
        if rc.eval_episodes or rc.collect_rollouts:  # served as its inference twin
            registry.get(rc.policy_config + "_infer")
    first = (rc.sft_config or rc.policy_config) if sft_stage else rc.policy_config  # the first policy trained
    with _field("sft_config" if first != rc.policy_config else "policy_config"):
        first_config = loop.config_for("policy", first)
    tokenizer = training.resolve_tokenizer(rc.tokenizer, flag="`tokenizer` in the round config")
    if not rc.previous_round:  # else its init is the previous round's policy
        tasks.PolicyTask(first_config, epath.Path(tokenizer), rc.sft_checkpoint, None).check_init("sft_checkpoint")
    if not rc.skip_value:
        with _field("value_config"):
            value = loop.config_for("value", rc.value_config)
        value_tokenizer = training.resolve_tokenizer(rc.value_tokenizer, flag="`value_tokenizer` in the round config")
        tasks.ValueTask(value, epath.Path(value_tokenizer), rc.value_init).check_init("value_init")
    with _field("cameras"):
        training.parse_cameras(tuple(rc.cameras))
    with _field("sources"):
        for source in rc.sources:
            with dataset_mod.open(source):
                pass
    if rc.success_file and not Path(rc.success_file).is_file():
        raise FileNotFoundError(f"success_file {rc.success_file}: no such file")
    if rc.eval_episodes and rc.eval_baseline:
        tasks.check_weights(rc.eval_baseline, f"eval_baseline {rc.eval_baseline}", "policy")
