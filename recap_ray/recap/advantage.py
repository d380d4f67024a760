"""N-step advantages over one episode, under our rule and under pistar's.

A_t = sum_{k=t}^{min(t+N, T)-1} r_k + B_t - V_t, no discount, with B_t = V_{t+N} while t + N < T
and the terminal value past the episode's end otherwise (spec recap.md §2.4).

pistar bootstraps 0 past the end of every episode. With limb's columns (failures keep a terminal
reward_label of 0 and a value target of -1) that makes the last N frames of a failed episode look
good: a perfect value model gives them A_t = 1 - (T-1-t)/T > 0. Our rule charges the failure at
the end instead: past the end of a failed episode the bootstrap is the failure value (-1, the
value model's lowest atom), so the same frames get A_t = -(T-1-t)/T <= 0; successes keep 0.

`stop_at_intervention` ends an autonomous frame's window where the operator next takes over:
A_t = sum_{k=t}^{e-1} r_k + V_e - V_t with e = min(t + N, next intervention start). The plain
window credits the frames just before a correction with the operator's progress after it (with a
fast operator and a value scale that sees speed, the frames that led into the correction look
best); cut there, it measures the policy's own stretch up to the state it handed over.

Arithmetic follows pistar's loop exactly (float32 reward sums by `np.sum` over each window, the
rest in float64, stored as float32), so `--compat pistar` gives bit-identical advantages.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Rule = Literal["recap", "pistar"]
RULES: tuple[str, ...] = ("recap", "pistar")
# Value of a failed episode past its end under our rule: the value model's lowest atom.
FAILURE_VALUE = -1.0
SUCCESS_VALUE = 0.0


def terminal_value(success: bool, rule: Rule, failure_value: float = FAILURE_VALUE) -> float:
    """The bootstrap past the episode's end: pistar always 0; ours 0 on success, `failure_value` else."""
    if rule not in RULES:
        raise ValueError(f"unknown advantage rule {rule!r}; expected one of {RULES}")
    return SUCCESS_VALUE if rule == "pistar" or success else failure_value


def window_ends(size: int, lookahead: int, intervention: np.ndarray | None = None) -> np.ndarray:
    """(T,) int: where each frame's window ends (exclusive): t + N, the episode's end, or with
    `intervention` flags, for an autonomous frame, the start of the next intervention."""
    ends = np.minimum(np.arange(size) + lookahead, size)
    if intervention is None:
        return ends
    human = np.asarray(intervention).reshape(-1).astype(bool)
    if human.size != size:
        raise ValueError(f"window ends: {human.size} intervention flags for {size} frames")
    next_human = np.full(size, size)
    for t in range(size - 2, -1, -1):
        next_human[t] = t + 1 if human[t + 1] else next_human[t + 1]
    return np.where(human, ends, np.minimum(ends, next_human))


def nstep(rewards: np.ndarray, values: np.ndarray, lookahead: int, terminal: float = 0.0,
          ends: np.ndarray | None = None) -> np.ndarray:
    """(T,) float32 N-step advantages of one episode; `terminal` is the value past its end,
    `ends` each frame's window end (default `window_ends` without intervention flags)."""
    r = np.asarray(rewards, np.float32).reshape(-1)
    v = np.asarray(values, np.float32).reshape(-1)
    if r.shape != v.shape:
        raise ValueError(f"n-step advantage: {r.size} rewards for {v.size} values")
    if lookahead < 1:
        raise ValueError(f"n-step advantage: lookahead must be >= 1, got {lookahead}")
    n = v.size
    end = window_ends(n, lookahead) if ends is None else np.asarray(ends, np.int64).reshape(-1)
    sums = np.array([np.sum(r[t : end[t]]) for t in range(n)], np.float32)  # np.sum per window, as pistar
    future = np.where(end < n, v[np.minimum(end, n - 1)].astype(np.float64), float(terminal))
    return (sums.astype(np.float64) + future - v.astype(np.float64)).astype(np.float32)


def episode(
    rewards: np.ndarray, values: np.ndarray, lookahead: int, success: bool, rule: Rule = "recap",
    intervention: np.ndarray | None = None,
) -> np.ndarray:
    """`nstep` with the terminal value `rule` gives an episode that ended in `success`; with
    `intervention` flags, autonomous windows stop at the next intervention."""
    ends = window_ends(np.asarray(values).size, lookahead, intervention)
    return nstep(rewards, values, lookahead, terminal_value(success, rule), ends)
