"""N-step advantages: a hand-computed example and a plain loop, under our rule and pistar's."""

from __future__ import annotations

import numpy as np
import pytest

from recap_ray.recap import advantage


def reference(rewards: np.ndarray, values: np.ndarray, lookahead: int, terminal: float) -> np.ndarray:
    """pistar's labelling loop (spec recap.md §2.4), with the value past the end as a parameter."""
    n = len(values)
    out = np.zeros(n, np.float32)
    for t in range(n):
        if t + lookahead < n:
            reward_sum = float(np.sum(rewards[t : t + lookahead]))
            future = float(values[t + lookahead])
        else:
            reward_sum = float(np.sum(rewards[t:]))
            future = terminal
        out[t] = reward_sum + future - float(values[t])
    return out


R = np.array([-0.25, -0.25, -0.25, 0.0], np.float32)
V = np.array([-0.8, -0.5, -0.3, -0.1], np.float32)


def test_hand_computed_pistar_bootstraps_zero():
    # t0: -0.5 + V2 - V0 = 0; t1: -0.5 + V3 - V1 = -0.1; t2: -0.25 + 0 + 0.3; t3: 0 + 0 + 0.1
    want = [0.0, -0.1, 0.05, 0.1]
    np.testing.assert_allclose(advantage.episode(R, V, 2, success=False, rule="pistar"), want, atol=1e-6)
    np.testing.assert_allclose(advantage.episode(R, V, 2, success=True, rule="pistar"), want, atol=1e-6)


def test_hand_computed_recap_charges_failure_at_the_end():
    np.testing.assert_allclose(advantage.episode(R, V, 2, success=False), [0.0, -0.1, -0.95, -0.9], atol=1e-6)
    np.testing.assert_allclose(advantage.episode(R, V, 2, success=True), [0.0, -0.1, 0.05, 0.1], atol=1e-6)


def test_perfect_value_model_on_limb_columns():
    """Spec §2 derived consequence: pistar makes the end of a failure look good, ours does not."""
    n, lookahead = 20, 5
    t = np.arange(n)
    rewards = np.full(n, -1.0 / n, np.float32)
    rewards[-1] = 0.0
    fail_v = np.full(n, -1.0, np.float32)
    tail = t >= n - lookahead
    pistar = advantage.episode(rewards, fail_v, lookahead, success=False, rule="pistar")
    ours = advantage.episode(rewards, fail_v, lookahead, success=False)
    np.testing.assert_allclose(pistar[tail], 1 - (n - 1 - t[tail]) / n, atol=1e-6)
    np.testing.assert_allclose(ours[tail], -(n - 1 - t[tail]) / n, atol=1e-6)
    np.testing.assert_allclose(ours[~tail], -lookahead / n, atol=1e-6)
    assert (pistar[tail] > 0).all() and (ours <= 0).all()
    success_v = (-(n - 1 - t) / n).astype(np.float32)
    np.testing.assert_allclose(advantage.episode(rewards, success_v, lookahead, success=True), 0.0, atol=1e-6)


@pytest.mark.parametrize("lookahead", [1, 3, 17, 40, 55])
@pytest.mark.parametrize("terminal", [0.0, -1.0])
def test_matches_reference_loop_exactly(lookahead, terminal):
    rng = np.random.default_rng(lookahead)
    n = 40
    rewards = rng.normal(-0.02, 0.01, n).astype(np.float32)
    values = rng.uniform(-1, 0, n).astype(np.float32)
    got = advantage.nstep(rewards, values, lookahead, terminal)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, reference(rewards, values, lookahead, terminal))


def test_terminal_value_rules_and_errors():
    assert advantage.terminal_value(False, "pistar") == 0.0
    assert advantage.terminal_value(True, "recap") == 0.0
    assert advantage.terminal_value(False, "recap") == -1.0
    with pytest.raises(ValueError, match="unknown advantage rule"):
        advantage.terminal_value(False, "gae")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="3 rewards for 2 values"):
        advantage.nstep(np.zeros(3), np.zeros(2), 1)
    with pytest.raises(ValueError, match="lookahead must be >= 1"):
        advantage.nstep(np.zeros(3), np.zeros(3), 0)


def test_stop_at_intervention_hand_computed():
    # Frames 2-3 are a correction; the state handed over at frame 2 is worse than its neighbours.
    rewards = np.array([-0.1, -0.1, -0.1, -0.1, -0.1, 0.0], np.float32)
    values = np.array([-0.6, -0.5, -0.7, -0.3, -0.2, -0.1], np.float32)
    human = np.array([0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(advantage.window_ends(6, 3, human), [2, 2, 5, 6, 6, 6])
    plain = advantage.episode(rewards, values, 3, success=True)
    stopped = advantage.episode(rewards, values, 3, success=True, intervention=human)
    # The plain window credits frames 0-1 with the operator's recovery; stopped, they own the bad hand-over.
    np.testing.assert_allclose(plain, [0.0, 0.0, 0.3, 0.1, 0.1, 0.1], atol=1e-6)
    np.testing.assert_allclose(stopped, [-0.3, -0.3, 0.3, 0.1, 0.1, 0.1], atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_without_interventions_stopping_changes_nothing(seed):
    rng = np.random.default_rng(seed)
    rewards, values = rng.normal(size=40).astype(np.float32), rng.normal(size=40).astype(np.float32)
    np.testing.assert_array_equal(advantage.episode(rewards, values, 7, success=False, intervention=np.zeros(40, int)),
                                  advantage.episode(rewards, values, 7, success=False))
