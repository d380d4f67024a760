"""Named, frozen configs for every stage, gathered in one registry.

Each stage keeps its configs in its own module under `recap_ray/configs/` and registers them
here with `register`. Names are unique across stages; `get` suggests the closest name on a miss.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

# Modules under recap_ray/configs/ that register configs when imported.
_CONFIG_MODULES: tuple[str, ...] = ("policy", "value")

_REGISTRY: dict[str, Any] = {}
_loaded = False


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


def names() -> list[str]:
    """All registered config names, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> Any:
    """The config registered as `name`; a miss raises KeyError naming the closest names."""
    _load_all()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"unknown config {name!r}{hint} (see `python -m jobs.params --list`)")
    return _REGISTRY[name]
