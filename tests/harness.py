"""The test harness: a real ``atoll serve`` process and real clients, importable by any test module.

Fixtures live in conftest.py; classes and helpers live here, because ``from conftest import`` is ambiguous once
several test directories have a conftest.py of their own.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
ATOLL = str(VENV_BIN / "atoll")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"atoll exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


@dataclass
class AtollProcess:
    """A live Atoll server: ``start``, ``kill`` (SIGKILL), ``stop`` (SIGTERM), ``restart``."""

    data_dir: str
    port: int = field(default_factory=free_port)
    access_key: str = field(default_factory=lambda: "AKTEST" + secrets.token_hex(6).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30)[:40])
    workers: int = 1
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    log_path: str = ""
    # Every server gets its own admin port (the default 9001 would make concurrent servers collide).
    admin_port: int = field(default_factory=free_port)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # Rewrites the server's command line, e.g. to start it in a mount namespace of its own (see test_disk_full).
    wrap: Callable[[list[str]], list[str]] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def env(self) -> dict[str, str]:
        env = {**os.environ, "ATOLL_ROOT_ACCESS_KEY": self.access_key, "ATOLL_ROOT_SECRET_KEY": self.secret_key,
               "ATOLL_ADMIN_ADDRESS": f"127.0.0.1:{self.admin_port}", "ATOLL_ADMIN_TOKEN": self.admin_token,
               **self.extra_env}
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_CONFIG_FILE"):
            env.pop(var, None)
        return env

    def start(self, timeout: float = 30.0) -> "AtollProcess":
        self.log_path = os.path.join(self.data_dir + "-logs", "server.log")
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        log = open(self.log_path, "ab")
        argv = [ATOLL, "serve", "--data-dir", self.data_dir, "--s3-address", f"127.0.0.1:{self.port}",
                "--workers", str(self.workers), *self.extra_args]
        self.proc = subprocess.Popen(
            self.wrap(argv) if self.wrap else argv,
            env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        wait_for_port(self.port, timeout, self.proc)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def restart(self) -> "AtollProcess":
        self.kill()
        return self.start()

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([ATOLL, *args, "--data-dir", self.data_dir], env=self.env(), capture_output=True,
                              text=True, check=check, timeout=60)

    def create_user(self, name: str) -> dict:
        out = self.cli("key", "create", "--name", name, "--json")
        return json.loads(out.stdout)

    def client(self, access_key: str | None = None, secret_key: str | None = None, **config_kwargs):
        return s3_client(self.endpoint, access_key or self.access_key, secret_key or self.secret_key,
                         **config_kwargs)


def s3_client(endpoint: str, access_key: str, secret_key: str, **config_kwargs):
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=10, read_timeout=120,
                    **config_kwargs)
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name="us-east-1", config=config)
