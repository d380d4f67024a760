"""Field checks for config dataclasses, run in `__post_init__`: an error names the class, field and value."""

from __future__ import annotations


def _fail(config: object, name: str, rule: str) -> None:
    raise ValueError(f"{type(config).__name__}.{name} must be {rule}, got {getattr(config, name)!r}")


def at_least(config: object, **minimums: float) -> None:
    """Each named field is >= its minimum (or None: unset, the default applies)."""
    for name, low in minimums.items():
        value = getattr(config, name)
        if value is not None and not value >= low:
            _fail(config, name, f">= {low}")


def positive(config: object, *names: str) -> None:
    """Each named field is > 0."""
    for name in names:
        if not getattr(config, name) > 0:
            _fail(config, name, "> 0")


def probabilities(config: object, *names: str) -> None:
    """Each named field is in [0, 1]."""
    for name in names:
        if not 0.0 <= getattr(config, name) <= 1.0:
            _fail(config, name, "in [0, 1]")


def ranges(config: object, *names: str) -> None:
    """Each named field is a (lo, hi) pair with lo <= hi."""
    for name in names:
        lo, hi = getattr(config, name)
        if not lo <= hi:
            _fail(config, name, "a range (lo, hi) with lo <= hi")
