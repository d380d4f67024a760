"""bench_train's FLOP count against hand-counted matrix work (dots, a strided conv, a scan, remat)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jobs.bench_train import matmul_flops


def test_matmul_flops_counts_dots_convs_scans_and_nested_calls() -> None:
    def f(x: jax.Array, w: jax.Array, k: jax.Array) -> jax.Array:
        y = jnp.einsum("bij,jk->bik", x, w)  # 5*7 rows x 8 -> 6
        c = jax.lax.conv_general_dilated(jnp.ones((2, 3, 16, 16)), k, (4, 4), "VALID")  # (2,10,4,4) outputs
        z, _ = jax.lax.scan(lambda carry, _: (carry @ w @ w.T, None), x[0], None, length=3)
        r = jax.checkpoint(lambda a: (a @ w).sum())(x[0])
        return y.sum() + c.sum() + z.sum() + r

    x, w, k = jnp.ones((5, 7, 8)), jnp.ones((8, 6)), jnp.ones((10, 3, 4, 4))
    expected = (
        2 * 5 * 7 * 8 * 6  # einsum
        + 2 * (2 * 10 * 4 * 4) * (3 * 4 * 4)  # conv: every output sums 3 channels x 4x4 taps
        + 3 * (2 * 7 * 8 * 6 + 2 * 7 * 6 * 8)  # scan body, 3 iterations
        + 2 * 7 * 8 * 6  # remat
    )
    assert matmul_flops(jax.make_jaxpr(jax.jit(f))(x, w, k).jaxpr) == expected
