"""Print a registered config's abstract parameter tree, or the registered config names.

    python -m jobs.params --config pi06_yam_vial_30fps   # one leaf a line: path [shape] dtype
    python -m jobs.params --list                         # one config name a line

Nothing is allocated: the tree comes from `config.abstract_params()` (an eval_shape).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from typing import Any

import tyro

from recap_ray.configs import registry


@dataclasses.dataclass(frozen=True)
class Args:
    """Command line of `jobs.params`."""

    config: str | None = None  # registered config name whose parameter tree to print
    list: bool = False  # print the registered config names instead


def leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, tuple[int, ...], str]]:
    """(path, shape, dtype) for every leaf of a nested dict, paths '/'-joined, sorted."""
    for key in sorted(tree):
        value = tree[key]
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from leaves(value, f"{path}/")
        else:
            yield path, tuple(value.shape), str(value.dtype)


def format_leaf(path: str, shape: tuple[int, ...], dtype: str) -> str:
    """`path [d0,d1,...] dtype`, the shape spelled as in the spec's tree listings."""
    return f"{path} [{','.join(str(d) for d in shape)}] {dtype}"


def main(args: Args) -> list[str]:
    """The lines to print for `args`."""
    if args.list:
        return registry.names()
    if args.config is None:
        raise SystemExit("jobs.params: give --config NAME or --list")
    config = registry.get(args.config)
    if not hasattr(config, "abstract_params"):
        raise SystemExit(f"jobs.params: config {args.config!r} has no model (no abstract_params())")
    return [format_leaf(*leaf) for leaf in leaves(config.abstract_params())]


if __name__ == "__main__":
    try:
        lines = main(tyro.cli(Args))
    except registry.UnknownConfig as err:
        raise SystemExit(str(err)) from None
    sys.stdout.write("".join(f"{line}\n" for line in lines))
