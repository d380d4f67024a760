"""C51 distribution over values: support on [-1, 0], two-hot target projection, loss, readout.

Matches pistar's value model (`value_model.py`): 201 atoms on linspace(-1, 0), a scalar target
is clipped to the support and split between its two neighbouring atoms by linear interpolation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NUM_ATOMS = 201
V_MIN = -1.0
V_MAX = 0.0


def delta_z(num_atoms: int = NUM_ATOMS, v_min: float = V_MIN, v_max: float = V_MAX) -> float:
    """Spacing between neighbouring atoms (0.005 for the default support)."""
    return (v_max - v_min) / (num_atoms - 1)


def support(num_atoms: int = NUM_ATOMS, v_min: float = V_MIN, v_max: float = V_MAX) -> jax.Array:
    """The atoms z_i = linspace(v_min, v_max, num_atoms), float32."""
    return jnp.linspace(v_min, v_max, num_atoms, dtype=jnp.float32)


def two_hot(
    targets: jax.Array, num_atoms: int = NUM_ATOMS, v_min: float = V_MIN, v_max: float = V_MAX
) -> jax.Array:
    """Project scalar targets (B,) onto the support: (B, num_atoms) rows summing to 1.

    y is clipped to [v_min, v_max]; b = clip(floor((y - v_min) / dz), 0, num_atoms - 2);
    p[b] = 1 - w, p[b + 1] = w with w = (y - z_b) / dz.
    """
    dz = delta_z(num_atoms, v_min, v_max)
    y = jnp.clip(jnp.asarray(targets, jnp.float32), v_min, v_max)
    left = jnp.clip(jnp.floor((y - v_min) / dz).astype(jnp.int32), 0, num_atoms - 2)
    w_right = (y - (v_min + left.astype(jnp.float32) * dz)) / dz
    atoms = jnp.arange(num_atoms)
    return (
        (atoms == left[..., None]) * (1.0 - w_right)[..., None]
        + (atoms == left[..., None] + 1) * w_right[..., None]
    ).astype(jnp.float32)


def target_distribution(targets: jax.Array, num_atoms: int = NUM_ATOMS) -> jax.Array:
    """Targets shaped (B,), (B, 1) or a full distribution (B, num_atoms) -> (B, num_atoms).

    Scalars are projected with `two_hot`; a full distribution is used as is (pistar's rule).
    """
    targets = jnp.asarray(targets, jnp.float32)
    if targets.ndim == 0:
        targets = targets[None]
    if targets.ndim == 2 and targets.shape[-1] == 1:
        targets = targets[:, 0]
    if targets.ndim == 1:
        return two_hot(targets, num_atoms)
    if targets.ndim == 2 and targets.shape[-1] == num_atoms:
        return targets
    raise ValueError(
        f"value targets have shape {targets.shape}; expected (B,), (B, 1) or (B, {num_atoms})"
    )


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean over the batch of -sum_i p_i log_softmax(logits)_i, logits cast to float32."""
    logits = logits.astype(jnp.float32)
    p = target_distribution(targets, logits.shape[-1])
    return jnp.mean(-jnp.sum(p * jax.nn.log_softmax(logits, axis=-1), axis=-1))


def expected_value(logits: jax.Array, v_min: float = V_MIN, v_max: float = V_MAX) -> jax.Array:
    """V = sum_i softmax(logits)_i z_i, float32, shape logits.shape[:-1]."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.sum(probs * support(logits.shape[-1], v_min, v_max), axis=-1)
