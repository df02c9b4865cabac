"""A throwaway PostgreSQL cluster for the tests, from Debian's ``postgresql`` package.

``cluster()`` starts one per pytest process (per xdist worker) on first use: ``initdb`` + ``pg_ctl`` from
``/usr/lib/postgresql/<newest>/bin``, data under ``/var/tmp/atoll-tests-pg-<pid>-*``, listening on 127.0.0.1 on a
free port with trust authentication, stopped (``pg_ctl stop -m immediate``) and removed at interpreter exit.
``fresh_database()`` hands each test an empty database with the current Atoll schema, copied from a template made
once per process (CREATE DATABASE ... TEMPLATE is much faster than running the migrations each time).

initdb refuses to run as root, so as root the binaries run as the unprivileged ``atoll-test`` user (made by
scripts/install-test-deps.sh; made here too if missing, so a root run never fails for want of it). Directories
left by a killed run (their pid is gone) are stopped and removed by the next run.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path

import psycopg

from atoll.processes import alive as _pid_alive
from harness import free_port

TEST_USER = "atoll-test"  # the unprivileged system user that owns the cluster when the tests run as root
SUPERUSER = "atoll"  # the cluster's superuser role, the one in every url()
TEMPLATE_DB = "atoll_template"
DIR_PREFIX = "atoll-tests-pg-"
INSTALL_HINT = "run `make test-deps` (or `bash scripts/install-test-deps.sh`)"

# A throwaway cluster, but a durable one: fsync and synchronous_commit stay on, since tests kill nodes and expect
# acknowledged writes to survive. max_connections covers three nodes' pools plus the tests' own connections.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "fsync": "on",
    "synchronous_commit": "on",
    "max_wal_size": "512MB",  # fewer checkpoints during a run
    "wal_level": "minimal",  # no replication here; CREATE DATABASE and bulk loads write less WAL
    "max_wal_senders": "0",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %d '",
    "timezone": "'UTC'",
}


def bin_dir() -> Path:
    """The newest installed PostgreSQL's bin directory (Debian installs each major version side by side)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        raise RuntimeError(f"PostgreSQL server binaries not found under /usr/lib/postgresql: {INSTALL_HINT}")
    return Path(found[-1]).parent


def _as_root() -> bool:
    return os.geteuid() == 0


def _ensure_test_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
                       check=True, capture_output=True)
        return pwd.getpwnam(TEST_USER)


def _cluster_parent() -> str:
    # As root the cluster runs as TEST_USER, who must be able to reach its directory: ATOLL_TEST_TMP if it can.
    parent = os.environ.get("ATOLL_TEST_TMP", "/var/tmp")
    if _as_root() and not all(os.stat(p).st_mode & 0o001 for p in _ancestors(parent)):
        return "/var/tmp"
    return parent


def _ancestors(path: str) -> list[str]:
    path = os.path.abspath(path)
    out = [path]
    while path != os.path.dirname(path):
        path = os.path.dirname(path)
        out.append(path)
    return out


class PgCluster:
    """One running PostgreSQL cluster. ``url(db)`` for clients; ``fresh_database()`` / ``drop(url)`` per test."""

    def __init__(self, parent: str | None = None) -> None:
        self.bin = bin_dir()
        self.parent = parent or _cluster_parent()
        self.base = ""
        self.port = 0
        self._lock = threading.Lock()
        self._template_ready = False

    # --- process ----------------------------------------------------------------------------------------------

    @property
    def data_dir(self) -> str:
        return os.path.join(self.base, "data")

    @property
    def log_path(self) -> str:
        return os.path.join(self.base, "postgres.log")

    def _run(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        if _as_root():
            argv = ["runuser", "-u", TEST_USER, "--", *argv]
        done = subprocess.run(argv, cwd=self.base, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
                               f"\n{self.log_text()[-3000:]}")
        return done

    def start(self) -> "PgCluster":
        remove_leftovers(self.parent)
        self.base = os.path.join(self.parent, f"{DIR_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
        os.mkdir(self.base, 0o700)
        if _as_root():
            user = _ensure_test_user()
            os.chown(self.base, user.pw_uid, user.pw_gid)
        self._run([str(self.bin / "initdb"), "-D", self.data_dir, "--auth=trust", f"--username={SUPERUSER}",
                   "--encoding=UTF8", "--locale=C", "--no-instructions", "--no-sync"])
        with open(os.path.join(self.data_dir, "postgresql.conf"), "a") as conf:
            conf.write("\n# atoll tests (tests/pgserver.py)\n")
            for name, value in SERVER_SETTINGS.items():
                conf.write(f"{name} = {value}\n")
            conf.write(f"unix_socket_directories = '{self.base}'\n")
        # A port from free_port() stays unbound until postgres binds it, so another process may win it meanwhile.
        for attempt in range(3):
            self.port = free_port()
            try:
                self._run([str(self.bin / "pg_ctl"), "-D", self.data_dir, "-l", self.log_path, "-w", "-t", "60",
                           "-o", f"-p {self.port}", "start"])
                break
            except RuntimeError:
                if attempt == 2 or "could not bind" not in self.log_text():
                    self.stop()
                    raise
        return self

    def stop(self) -> None:
        """Stop at once (the data is thrown away) and remove the directory."""
        if not self.base:
            return
        if os.path.exists(os.path.join(self.data_dir, "postmaster.pid")):
            try:
                self._run([str(self.bin / "pg_ctl"), "-D", self.data_dir, "-m", "immediate", "-w", "stop"], 60)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        if not os.environ.get("ATOLL_KEEP_TEST_DATA"):
            shutil.rmtree(self.base, ignore_errors=True)
        self.base = ""

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    # --- databases --------------------------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", **kwargs) -> psycopg.Connection:
        return psycopg.connect(self.url(dbname), autocommit=True, **kwargs)

    def psql(self, sql: str, dbname: str = "postgres", params=None) -> list[tuple]:
        """Run ``sql`` (several statements allowed when there are no params) in autocommit; the last result's rows."""
        with self.connect(dbname) as conn:
            cur = conn.execute(sql, params)
            rows = cur.fetchall() if cur.description else []
            while cur.nextset():
                rows = cur.fetchall() if cur.description else []
            return rows

    def _ensure_template(self) -> None:
        with self._lock:
            if self._template_ready:
                return
            from atoll.stores.meta import migrations

            self.psql(f'DROP DATABASE IF EXISTS {TEMPLATE_DB}')
            self.psql(f'CREATE DATABASE {TEMPLATE_DB}')
            with self.connect(TEMPLATE_DB) as conn:
                migrations.upgrade_postgres(conn)
            # Nobody may stay connected to a template while it is copied.
            self.psql(f"ALTER DATABASE {TEMPLATE_DB} WITH ALLOW_CONNECTIONS false")
            self._template_ready = True

    def fresh_database(self, hint: str = "t") -> str:
        """A new database holding the current Atoll schema (migrations at LATEST, no rows); returns its url."""
        self._ensure_template()
        name = f"{re.sub(r'[^a-z0-9_]', '_', hint.lower())[:40]}_{secrets.token_hex(4)}"
        self.psql(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE_DB}')
        return self.url(name)

    def empty_database(self, hint: str = "e") -> str:
        """A new database with no schema at all (migration tests start from here)."""
        name = f"{re.sub(r'[^a-z0-9_]', '_', hint.lower())[:40]}_{secrets.token_hex(4)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop(self, url: str) -> None:
        """Drop the database of ``url``, closing whatever connections still use it (a killed node's, say)."""
        name = url.rsplit("/", 1)[1].split("?", 1)[0]
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def remove_leftovers(parent: str) -> None:
    """Stop and remove clusters whose creating process is gone (a killed pytest run leaves its postgres running)."""
    for path in glob.glob(os.path.join(parent, f"{DIR_PREFIX}*")):
        match = re.match(rf"{DIR_PREFIX}(\d+)-", os.path.basename(path))
        if not match or _pid_alive(int(match.group(1))):
            continue
        data = os.path.join(path, "data")
        pid_file = os.path.join(data, "postmaster.pid")
        try:
            postmaster = int(Path(pid_file).read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            postmaster = 0
        if postmaster and _pid_alive(postmaster):
            argv = [str(bin_dir() / "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"]
            if _as_root():
                argv = ["runuser", "-u", TEST_USER, "--", *argv]
            subprocess.run(argv, capture_output=True, timeout=60, cwd=path)
            deadline = time.monotonic() + 10
            while _pid_alive(postmaster) and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(path, ignore_errors=True)


_cluster: PgCluster | None = None
_cluster_lock = threading.Lock()


def cluster() -> PgCluster:
    """This process's cluster, started on first use and stopped at interpreter exit."""
    global _cluster
    with _cluster_lock:
        if _cluster is None:
            started = PgCluster().start()
            atexit.register(started.stop)
            _cluster = started
        return _cluster
