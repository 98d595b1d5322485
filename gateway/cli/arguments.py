"""Argument types that several commands' parsers share."""

from __future__ import annotations

import argparse


def positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value
