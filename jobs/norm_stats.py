"""python -m jobs.norm_stats --dataset D [--config POLICY_CONFIG] [--output FILE]: openpi norm_stats.json.

With --config: the stats that policy trains with (`jobs.train_policy --norm-stats`): the state, and
the action chunks of its horizon made relative to the state where the config uses delta actions, as
openpi computes them after its data transforms. Without: the state and action columns as stored.
The file says which under "recap_ray" (openpi ignores it), and `train_policy --norm-stats` refuses
stats made for other actions than the policy's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jobs import cli
from recap_ray.configs import policy as policy_configs
from recap_ray.configs import registry
from recap_ray.data import dataset, norm_stats
from recap_ray.train import samples, tasks


@dataclass(frozen=True)
class Config:
    dataset: Path
    """Dataset to read."""
    output: Path | None = None
    """Where to write norm_stats.json (default: next to the dataset, DATASET.norm_stats.json)."""
    state_key: str = norm_stats.STATE_KEY
    """Column holding the state vector."""
    action_key: str = norm_stats.ACTION_KEY
    """Column holding the action vector."""
    config: str | None = None
    """Registered policy config whose training stats to compute (delta action chunks of its horizon)."""


def main(config: Config) -> Path:
    out = config.output or config.dataset.with_name(config.dataset.name + ".norm_stats.json")
    if out.is_dir():
        raise ValueError(f"--output {out} is a directory; give the file to write, e.g. {out / 'norm_stats.json'}")
    policy = registry.get(config.config, policy_configs.PolicyConfig) if config.config is not None else None
    if policy is not None and (config.state_key, config.action_key) != (norm_stats.STATE_KEY, norm_stats.ACTION_KEY):
        raise ValueError(f"--config trains on {norm_stats.STATE_KEY!r} and {norm_stats.ACTION_KEY!r}; drop --state-key/--action-key")
    with dataset.open(config.dataset) as ds:
        if policy is not None:
            # The widths train_policy checks (at least the delta mask's): narrower vectors fail in numpy otherwise.
            needs = samples.PolicySamples.requirements(policy, samples.YAM_CAMERA_ROLES)
            widths = {key: needs.columns[key] for key in (norm_stats.STATE_KEY, norm_stats.ACTION_KEY)}
            samples.Needs({}, widths, needs.width_hint).check(config.dataset, ds.features, config.config)
            stats = tasks.delta_action_stats(ds, policy.model.action_horizon, policy.use_delta_joint_actions,
                                              policy.adapt_to_pi)  # fmt: skip
            computed_as = tasks.stats_provenance(policy, config.config)
        else:
            stats = norm_stats.compute(ds, {"state": config.state_key, "actions": config.action_key}, progress=True)
            computed_as = {"actions": "stored", "state_key": config.state_key, "action_key": config.action_key}
    norm_stats.save(out, stats, computed_as)
    return out


if __name__ == "__main__":
    print(main(cli.parse(Config, __doc__)))
