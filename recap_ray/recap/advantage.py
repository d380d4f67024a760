"""N-step advantages over one episode, under our rule and under pistar's.

A_t = sum_{k=t}^{min(t+N, T)-1} r_k + B_t - V_t, no discount, with B_t = V_{t+N} while t + N < T
and the terminal value past the episode's end otherwise (spec recap.md §2.4).

pistar bootstraps 0 past the end of every episode. With limb's columns (failures keep a terminal
reward_label of 0 and a value target of -1) that makes the last N frames of a failed episode look
good: a perfect value model gives them A_t = 1 - (T-1-t)/T > 0. Our rule charges the failure at
the end instead: past the end of a failed episode the bootstrap is the failure value (-1, the
value model's lowest atom), so the same frames get A_t = -(T-1-t)/T <= 0; successes keep 0.

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


def window_sums(rewards: np.ndarray, lookahead: int) -> np.ndarray:
    """(T,) float32: sum of rewards[t : t + lookahead], each window summed by `np.sum` as pistar does."""
    r = np.asarray(rewards, np.float32).reshape(-1)
    return np.array([np.sum(r[t : t + lookahead]) for t in range(r.size)], np.float32)


def nstep(rewards: np.ndarray, values: np.ndarray, lookahead: int, terminal: float = 0.0) -> np.ndarray:
    """(T,) float32 N-step advantages of one episode; `terminal` is the value past its end."""
    r = np.asarray(rewards, np.float32).reshape(-1)
    v = np.asarray(values, np.float32).reshape(-1)
    if r.shape != v.shape:
        raise ValueError(f"n-step advantage: {r.size} rewards for {v.size} values")
    if lookahead < 1:
        raise ValueError(f"n-step advantage: lookahead must be >= 1, got {lookahead}")
    n = v.size
    future = np.full(n, float(terminal), np.float64)
    if lookahead < n:
        future[: n - lookahead] = v[lookahead:]
    return (window_sums(r, lookahead).astype(np.float64) + future - v.astype(np.float64)).astype(np.float32)


def episode(
    rewards: np.ndarray, values: np.ndarray, lookahead: int, success: bool, rule: Rule = "recap"
) -> np.ndarray:
    """`nstep` with the terminal value `rule` gives an episode that ended in `success`."""
    return nstep(rewards, values, lookahead, terminal_value(success, rule))
