"""Named, frozen configs for every stage, gathered in one registry.

Each stage keeps its configs in its own module under `recap_ray/configs/` and registers them
here with `register`. Names are unique across stages; `get` suggests the closest name on a miss and,
given the kind of config a caller needs, names the registered ones of that kind when it gets another.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

# Modules under recap_ray/configs/ that register configs when imported.
_CONFIG_MODULES: tuple[str, ...] = ("policy", "value")

_REGISTRY: dict[str, Any] = {}
_loaded = False


class UnknownConfig(ValueError):
    """No config is registered under the name asked for (a typo on a command line or in a round's YAML)."""


def register(config: Any) -> Any:
    """Add a config (any frozen dataclass with a `name` field) to the registry; returns it."""
    name = getattr(config, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"config {config!r} has no string `name` field")
    if name in _REGISTRY:
        raise ValueError(f"config name {name!r} is registered twice")
    _REGISTRY[name] = config
    return config


def _load_all() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _CONFIG_MODULES:
            importlib.import_module(f"recap_ray.configs.{module}")


def names(kind: type | None = None) -> list[str]:
    """The registered config names (of configs that are a `kind`, when given), sorted."""
    _load_all()
    return sorted(name for name, config in _REGISTRY.items() if kind is None or isinstance(config, kind))


def get(name: str, kind: type | None = None) -> Any:
    """The config registered as `name`; a miss raises UnknownConfig naming the closest names, and a config that is
    not a `kind` (when given) a ValueError naming the registered configs of that kind."""
    _load_all()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownConfig(f"unknown config {name!r}{hint} (see `python -m jobs.params --list`)")
    config = _REGISTRY[name]
    if kind is not None and not isinstance(config, kind):
        those = names(kind)
        more = f" and {len(those) - 6} more (`python -m jobs.params --list`)" if len(those) > 6 else ""
        raise ValueError(f"config {name!r} is a {type(config).__name__}, not a {kind.__name__}; "
                         f"those are {', '.join(those[:6])}{more}")  # fmt: skip
    return config
