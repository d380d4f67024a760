"""Rounds on the simulated handover task (`jobs.round --demo | --experiment`): the data they generate, their
round configs, and the run that ends with the SFT-vs-RECAP success table.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from jobs import make_dataset
from jobs import round as round_job
from recap_ray import manifest as manifest_lib
from recap_ray.sim import session, world


@dataclasses.dataclass(frozen=True)
class SimRound:
    """A round on the simulated task: its config (sources and tokenizers are filled in) and the data generated for it."""

    round: round_job.RoundConfig  # the round, SFT baseline included
    demos: int  # expert demonstrations generated for the data stage
    rollouts: int  # DAgger rollouts of the scripted degraded controller generated beside them


DEMO = SimRound(round_job.RoundConfig(policy_config="pi06_sim", value_config="value_tiny", value_steps=100, policy_steps=150,
                                      batch_size=8, lookahead=10, eval_episodes=10), demos=20, rollouts=40)  # fmt: skip
# The handover with wider grasp and goal tolerances and half the spread of object and goal starts: on the
# full task the CPU-size policy grasps in 28% of episodes and completes none (BENCHMARKS.md "RECAP vs SFT").
EXPERIMENT_TASK = world.TaskConfig(grasp_radius=0.05, goal_radius=0.07, object_x=(-0.27, -0.17), object_y=(0.2, 0.3),
                                   goal_x=(0.17, 0.27), goal_y=(0.2, 0.3))  # fmt: skip
# BENCHMARKS.md "RECAP vs SFT": SFT on demos and scripted DAgger rollouts, 120 rollouts of the served SFT
# policy with up to 3 corrections each, value model on the task's steps-to-success scale, relabel with
# windows stopped at corrections, RECAP fine-tune from SFT on a fine-tuning schedule; both policies served
# with guidance 2, 200 episodes each.
EXPERIMENT = SimRound(round_job.RoundConfig(policy_config="pi06_sim_small_ft", sft_config="pi06_sim_small", value_config="value_sim",
                                            sft_steps=3000, policy_steps=2000, value_steps=6000, batch_size=32, lookahead=30, value_scale="task",
                                            stop_at_intervention=True, cfg_beta=2.0, collect_rollouts=120, eval_episodes=200,
                                            task=EXPERIMENT_TASK, dagger=session.DaggerConfig(max_corrections=3)),
                      demos=40, rollouts=40)  # fmt: skip


def simulated(out: Path, setup: SimRound, serve_port: int | None = None) -> dict[str, Any]:
    """Simulated data, a tokenizer trained here, an SFT baseline and a RECAP round, both evaluated."""
    from recap_ray import demo_assets

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = demo_assets.tokenizer(out / "tokenizer")
    generated = out / "generated"
    if not (generated / "meta" / "info.json").is_file():
        shutil.rmtree(generated, ignore_errors=True)
        make_dataset.main(make_dataset.Config(output=generated, demos=setup.demos, rollouts=setup.rollouts, workers=1,
                                              task=setup.round.task, dagger=setup.round.dagger))  # fmt: skip
    rc = dataclasses.replace(setup.round, sources=(str(generated),), tokenizer=str(tokenizer), value_tokenizer=str(tokenizer),
                             serve_port=serve_port or setup.round.serve_port)  # fmt: skip
    record = round_job.run_round(rc, out / "round", sft_stage=True)
    table = record["stages"].get("evaluate", {}).get("metrics", {})
    lines = ["", "policy     success  95% CI          episodes", "---------  -------  --------------  --------"]
    for label, m in table.items():
        lo, hi = m["success_rate_ci95"]
        name = "SFT" if label == "baseline" else "RECAP"
        lines.append(f"{name:9}  {m['success_rate']:7.2f}  [{lo:.2f}, {hi:.2f}]    {m['successes']}/{m['episodes']}")
    lines += ["", f"round manifest: {out / 'round' / manifest_lib.FILE}", f"TensorBoard:    tensorboard --logdir {out}",
              f"relabel plots:  {out / 'round' / 'relabeled.relabel'}"]  # fmt: skip
    print("\n".join(lines))
    return record
