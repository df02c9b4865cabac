"""The classes of WAN traffic, in priority order."""

from __future__ import annotations

import enum


class Traffic(enum.Enum):
    DEMAND = "demand"  # a client waits on it
    STAGE = "stage"  # a staging job
    DRAIN = "drain"  # write-back uploads and deletes
