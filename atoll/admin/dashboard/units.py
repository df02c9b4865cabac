"""Numbers as the dashboard shows them (static/dashboard.js formats live updates the same way)."""

from __future__ import annotations

import time

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(value: float | None) -> str:
    if value is None:
        return "–"
    value = float(value)
    unit = 0
    while abs(value) >= 1024 and unit < len(_BYTE_UNITS) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{int(value)} B"
    return f"{value:.1f} {_BYTE_UNITS[unit]}"


def format_count(value: float | None) -> str:
    if value is None:
        return "–"
    if float(value).is_integer():
        return f"{int(value):,}".replace(",", "\u202f")  # a narrow no-break space between thousands
    return f"{value:.1f}"


def format_rate(value: float | None) -> str:
    return "–" if value is None else f"{format_bytes(value)}/s"


def format_per_second(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}/s"


def format_percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


def format_seconds(value: float | None) -> str:
    """A duration: 850 ms, 12.3 s, 4 m 10 s, 3 h 05 m, 2 d 4 h."""
    if value is None:
        return "–"
    value = float(value)
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes} m {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} m"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def format_clock(value: float | None) -> str:
    """A time of day on the server's clock (HH:MM:SS); the browser shows its own local time."""
    return "–" if not value else time.strftime("%H:%M:%S", time.localtime(value))


def format_datetime(value: float | None) -> str:
    return "–" if not value else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def format_text(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "–"
    return str(value)


FORMATS = {"bytes": format_bytes, "count": format_count, "rate": format_rate, "per_second": format_per_second,
           "percent": format_percent, "seconds": format_seconds, "clock": format_clock,
           "datetime": format_datetime, "text": format_text, "state": format_text}


def format_value(value, kind: str = "text") -> str:
    return FORMATS.get(kind, format_text)(value)
