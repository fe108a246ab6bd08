"""Command-line argument types shared by `aegis model-server` and `aegis announce`."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def port_from(lowest: int) -> Callable[[str], int]:
    """A port argument from `lowest` (0 where "any free port" makes sense) to 65535."""

    def port(text: str) -> int:
        value = int(text)
        if not lowest <= value <= 65535:
            raise argparse.ArgumentTypeError(f"{value} is not a port ({lowest}..65535)")
        return value

    return port


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value
