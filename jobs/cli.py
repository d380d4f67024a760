"""What every job entry point shares: logging set-up and tyro parsing of its config dataclass."""

from __future__ import annotations

import logging
from typing import TypeVar

import tyro

T = TypeVar("T")


def parse(config_type: type[T], description: str) -> T:
    """Parse the command line into `config_type` and configure logging for the job."""
    config = tyro.cli(config_type, description=description)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return config
