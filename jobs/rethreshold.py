"""python -m jobs.rethreshold --dataset D --output O [--positive-ratio R --threshold-scope task|global --lookahead N --compat recap|pistar]

Relabel again from the `value` column a relabel stored, without running the model: advantages
are recomputed (N and the rule may change), thresholds taken again, `adv_ind` rewritten, and O
published as a new version. Each setting left out is the one in D's lineage, so one flag changes
one thing.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Literal

from actors import relabel_output, relabel_store
from jobs import cli
from jobs import relabel as relabel_job
from recap_ray.data import dataset as dataset_mod
from recap_ray.data import versions

logger = logging.getLogger(__name__)

# Lineage keys of the values' origin, carried over to the new version.
_CARRIED = ("value_checkpoint", "value_checkpoint_key", "value_config", "use_ema", "dtype", "batch_size", "cameras")


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: Path
    """A relabelled dataset (has a `value` column); only read."""
    output: Path
    """New dataset version; must not exist."""
    positive_ratio: float | None = None
    """Share of autonomous frames labelled positive (ties go positive); default D's (else 0.3)."""
    threshold_scope: Literal["task", "global"] | None = None
    """One threshold per task or one global; default D's when the rule is D's, else the rule's (task; pistar: global)."""
    lookahead: int | None = None
    """N of the N-step advantage; default the one D was relabelled with (else 50)."""
    compat: Literal["recap", "pistar"] | None = None
    """Advantage rule; default the one D was relabelled with (else recap)."""
    stop_at_intervention: bool | None = None
    """Autonomous windows end at the next intervention; default as D was relabelled (else no)."""
    log_dir: Path | None = None
    """Plots and TensorBoard; default <output>.relabel."""
    plot_episodes: int = 6
    """Episodes whose value curves are plotted."""


def main(config: Config) -> Path:
    """Label from stored values and publish; returns the new version's path."""
    if config.output.exists():
        raise FileExistsError(f"{config.output}: already exists; versions are never overwritten")
    parent = (versions.read_lineage(config.dataset) or {}).get("params", {})
    lookahead = config.lookahead if config.lookahead is not None else int(parent.get("lookahead", 50))
    compat = config.compat or parent.get("rule", "recap")
    ratio = config.positive_ratio if config.positive_ratio is not None else float(parent.get("positive_ratio", 0.3))
    scope = config.threshold_scope or (parent.get("threshold_scope") if compat == parent.get("rule") else None)
    stop = config.stop_at_intervention
    stop = bool(parent.get("stop_at_intervention", False)) if stop is None else stop
    labelling = relabel_job.settings(lookahead, ratio, compat, scope, stop)
    with dataset_mod.open(config.dataset) as ds:
        values = relabel_output.stored_values(ds)
    params = {"values_from": str(config.dataset.resolve()), **{k: parent[k] for k in _CARRIED if k in parent}}
    log_dir = config.log_dir or relabel_store.side_dir(config.output)
    out, _ = relabel_output.publish(config.dataset, config.output, values, labelling, params, log_dir, config.plot_episodes)
    logger.info("re-thresholded %s -> %s", config.dataset, out)
    return out


if __name__ == "__main__":
    print(main(cli.parse(Config, __doc__)))
