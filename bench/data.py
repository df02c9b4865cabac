"""Source objects on disk (shared by every server under test), their MD5s, and the disk-space check."""
from __future__ import annotations

import hashlib
import os
import shutil

from .common import GIB, MIB


class SourceFiles:
    """<bench_dir>/src/obj-<size>.bin files of random bytes (cached between runs) plus an .md5 sidecar."""

    def __init__(self, bench_dir: str):
        self.dir = os.path.join(bench_dir, "src")

    def path(self, size: int) -> str:
        return os.path.join(self.dir, f"obj-{size}.bin")

    def md5(self, size: int) -> str:
        with open(self.path(size) + ".md5") as f:
            return f.read().strip()

    def ensure(self, size: int) -> str:
        os.makedirs(self.dir, exist_ok=True)
        p = self.path(size)
        if os.path.exists(p) and os.path.getsize(p) == size and os.path.exists(p + ".md5"):
            return p
        chunk = os.urandom(min(size, 64 * MIB))
        h = hashlib.md5()
        with open(p + ".tmp", "wb") as f:
            left = size
            while left:
                part = chunk[:min(left, len(chunk))]
                f.write(part)
                h.update(part)
                left -= len(part)
        os.replace(p + ".tmp", p)
        with open(p + ".md5", "w") as f:
            f.write(h.hexdigest() + "\n")
        return p

    def missing_bytes(self, sizes) -> int:
        return sum(s for s in set(sizes) if not (os.path.exists(self.path(s)) and os.path.getsize(self.path(s)) == s))


def warm(path: str) -> None:
    """Read a file once so it sits in the page cache (bounded by its size)."""
    buf = bytearray(16 * MIB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def check_space(bench_dir: str, need: int) -> tuple[bool, str]:
    os.makedirs(bench_dir, exist_ok=True)
    free = shutil.disk_usage(bench_dir).free
    msg = f"{bench_dir}: {free / 1e9:.1f} GB free, this run needs about {need / 1e9:.1f} GB"
    return free >= need, msg


def space_needed(big_size: int, moto_size: int, missing: int) -> int:
    # files still to create + Atoll's stored copy + the previous PUT object of nginx and of Atoll (deleted only right
    # before the next PUT to the same server) + one PUT in flight + margin
    return missing + 4 * big_size + moto_size + max(GIB // 4, big_size // 8)
