"""Sizes given on the command line: a byte count with an optional unit (10GiB, 500MB, 1.5TiB, 4096)."""

from __future__ import annotations

import re

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40, "pib": 1 << 50}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes named by ``text``; ValueError (with a message for the user) when it is not a size."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. 4096, 500MB, 10GiB)")
    number = match.group(1)
    return int(number) * _UNITS[unit] if "." not in number else int(float(number) * _UNITS[unit])


def format_size(size: int) -> str:
    """``size`` in the largest binary unit that keeps it at least 1 (exact bytes below 1 KiB)."""
    for unit, factor in (("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.4g}{unit}"
    return f"{size}B"
