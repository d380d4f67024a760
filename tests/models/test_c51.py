"""C51 support, two-hot projection, loss and readout against hand-computed numbers."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from recap_ray.models import c51


def _dist(entries: dict[int, float]) -> np.ndarray:
    p = np.zeros(201, np.float32)
    for i, w in entries.items():
        p[i] = w
    return p


def test_support_is_201_atoms_on_minus_one_to_zero():
    z = np.asarray(c51.support())
    assert z.shape == (201,) and z[0] == -1.0 and z[-1] == 0.0
    np.testing.assert_allclose(np.diff(z), 0.005, atol=1e-6)
    assert c51.delta_z() == pytest.approx(0.005)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (-1.0, {0: 1.0}),  # lower end
        (0.0, {200: 1.0}),  # upper end: b clipped to 199, all weight right
        (-0.5, {100: 1.0}),  # exactly on atom 100
        (-0.75, {50: 1.0}),  # exactly on atom 50
        (-0.9975, {0: 0.5, 1: 0.5}),  # halfway between atoms 0 and 1
        (-0.499, {100: 0.8, 101: 0.2}),  # (-0.499 - -0.5) / 0.005 = 0.2 to the right
        (-0.0035, {199: 0.7, 200: 0.3}),  # near the top: z_199 = -0.005, w_right = 0.0015/0.005 = 0.3
        (-1.7, {0: 1.0}),  # clipped below
        (0.4, {200: 1.0}),  # clipped above
    ],
)
def test_two_hot_hand_cases(target, expected):
    got = np.asarray(c51.two_hot(jnp.array([target])))[0]
    np.testing.assert_allclose(got, _dist(expected), atol=2e-5)
    assert got.sum() == pytest.approx(1.0, abs=1e-6)


def test_target_shapes_and_full_distribution_passthrough():
    a = c51.target_distribution(jnp.array([-0.5, -0.25]))
    b = c51.target_distribution(jnp.array([[-0.5], [-0.25]]))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    full = np.full((2, 201), 1 / 201, np.float32)
    np.testing.assert_array_equal(np.asarray(c51.target_distribution(full)), full)
    with pytest.raises(ValueError, match="expected"):
        c51.target_distribution(jnp.zeros((2, 7)))


def test_cross_entropy_hand_computed():
    # uniform logits: -log(1/201) whatever the target
    assert float(c51.cross_entropy(jnp.zeros((3, 201)), jnp.array([-1.0, -0.3, 0.0]))) == pytest.approx(
        math.log(201), rel=1e-6
    )
    # logits favouring atom 100 by log(3): p100 = 3/203; target on atom 100 -> -log(3/203)
    logits = np.zeros((1, 201), np.float32)
    logits[0, 100] = math.log(3.0)
    assert float(c51.cross_entropy(jnp.asarray(logits), jnp.array([-0.5]))) == pytest.approx(
        -math.log(3 / 203), rel=1e-5
    )
    # target split 0.8/0.2 between atoms 100/101: 0.8*-log(3/203) + 0.2*-log(1/203)
    expected = 0.8 * -math.log(3 / 203) + 0.2 * -math.log(1 / 203)
    assert float(c51.cross_entropy(jnp.asarray(logits), jnp.array([-0.499]))) == pytest.approx(expected, rel=1e-4)


def test_expected_value_readout():
    assert float(c51.expected_value(jnp.zeros((201,)))) == pytest.approx(-0.5, abs=1e-6)
    peaked = np.full((2, 201), -1e4, np.float32)
    peaked[0, 0] = 0.0
    peaked[1, 200] = 0.0
    np.testing.assert_allclose(np.asarray(c51.expected_value(jnp.asarray(peaked))), [-1.0, 0.0], atol=1e-6)
    rng = np.random.default_rng(0)
    v = np.asarray(c51.expected_value(jnp.asarray(rng.normal(0, 30, (64, 201)), jnp.bfloat16)))
    assert v.dtype == np.float32 and np.all(v >= -1.0) and np.all(v <= 0.0)
