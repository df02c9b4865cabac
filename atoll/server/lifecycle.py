"""Starting and stopping Atoll: data directory, root identity, worker processes, signals.

The master prepares everything that must happen once (directories, schema, crash leftovers, root credentials),
then serves itself (``workers = 1``) or forks N workers that each bind the port with SO_REUSEPORT, so the kernel
spreads connections over them. The master restarts a worker that dies and forwards SIGTERM/SIGINT; on SIGTERM
every worker stops accepting, finishes its in-flight requests within ``shutdown_grace`` seconds and exits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import gc
import logging
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass

from atoll.admin.multiproc import mark_dead as mark_metrics_dead
from atoll.admin.peerhealth import HealthPublisher, health_dir
from atoll.config import Config
from atoll import errors
from atoll.blob.app import BlobApp
from atoll.core.models import Identity
from atoll.core.namespace import Namespace, new_account_key, new_secret_key, validate_account_name
from atoll.core import cluster, qos
from atoll.core.recovery import reclaim_orphan_blobs
from atoll.http.server import HttpServer, Timeouts, bind_socket
from atoll.s3.app import S3App
from atoll.server import runstate
from atoll.server.stores import StartupError, build_namespace, open_stores  # re-exported: the CLI's name for them
from atoll.server.accesslog import AccessLog
from atoll.stores.data.files import FileDataStore
from atoll.stores.meta.sql import SqlMetaStore

log = logging.getLogger("atoll")

ROOT_CREDENTIALS_FILE = "root-credentials"
# With other nodes running on the shared directory: a temp file unchanged this long is a dead write's (a live one
# is written to continuously; stalled clients are cut after timeouts.stall), and a blob without a row this old is
# not a peer's commit in flight.
STALE_TEMP_SECONDS = 600.0
RECLAIM_AGE = 600.0
_DEFERRED_RECLAIM: list[float] = []  # [crashed run's start, this run's start]: reclaim_later in the primary
_NODE_STARTED = [time.time()]
DATA_DIR_LOCK_WAIT = 2.0
# glibc returns freed heap to the OS after every large free by default; with 64 KiB–1 MiB request-body chunks
# that costs 3× the CPU of a PUT (perf-baseline.md §2). These keep the heap warm.
MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": "1073741824", "MALLOC_TOP_PAD_": "67108864"}
# Held (blocked) from the moment the port opens until a process has its handlers for them: a stop that arrives
# while a server is still starting then takes the graceful path instead of the signal's default action.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@dataclass(slots=True)
class RootCredentials:
    access_key: str
    secret_key: str
    generated: bool
    account_name: str = ""  # the root's Azure Blob account and its base64 key
    account_key: str = ""
    account_generated: bool = False


ROOT_ACCOUNT_NAME = "atollroot"  # the generated root account's name (Azure: 3-24 lower-case letters and digits)


def _root_account(existing: Identity | None) -> tuple[str, str, bool]:
    """(name, key, generated) of the root's Blob account: from ATOLL_ROOT_ACCOUNT_NAME/KEY if set, else the
    stored one, else a new one."""
    env_name = os.environ.get("ATOLL_ROOT_ACCOUNT_NAME")
    env_key = os.environ.get("ATOLL_ROOT_ACCOUNT_KEY")
    if bool(env_name) != bool(env_key):
        raise StartupError("set both ATOLL_ROOT_ACCOUNT_NAME and ATOLL_ROOT_ACCOUNT_KEY, or neither")
    if env_name:
        try:
            validate_account_name(env_name)
        except errors.InvalidArgument as exc:
            raise StartupError(f"ATOLL_ROOT_ACCOUNT_NAME: {exc.message}") from None
        try:
            if len(base64.b64decode(env_key, validate=True)) < 16:
                raise ValueError
        except (binascii.Error, ValueError):
            raise StartupError("ATOLL_ROOT_ACCOUNT_KEY must be base64 of at least 16 bytes (Azure keys are 64 "
                               "bytes)") from None
        return env_name, env_key, False
    if existing is not None and existing.account_name:
        return existing.account_name, existing.account_key, False
    return ROOT_ACCOUNT_NAME, new_account_key(), True


@dataclass(slots=True)
class AdminListener:
    """The admin API's socket, bound by the master before any worker starts, and its bearer token. Only worker
    slot 0 (the primary) serves it; a restarted primary takes the same socket over."""

    sock: socket.socket
    token: str
    started: float
    generated: bool = False  # the token was made at this start (printed once, like root credentials)


def ensure_malloc_env() -> None:
    """Re-exec once with the malloc settings if they are not in the environment (they only apply at start)."""
    if all(os.environ.get(k) for k in MALLOC_ENV) or os.environ.get("ATOLL_NO_REEXEC"):
        return
    env = {**os.environ, **MALLOC_ENV, "ATOLL_NO_REEXEC": "1"}
    argv = [sys.executable, *sys.orig_argv[1:]] if hasattr(sys, "orig_argv") else [sys.executable, *sys.argv]
    os.execve(sys.executable, argv, env)


def bootstrap_root(config: Config, meta: SqlMetaStore) -> RootCredentials:
    """The root identity: from ATOLL_ROOT_ACCESS_KEY/SECRET_KEY if set, else the one stored, else a new one
    written (mode 0600) to <data_dir>/root-credentials and printed once."""
    env_key = os.environ.get("ATOLL_ROOT_ACCESS_KEY")
    env_secret = os.environ.get("ATOLL_ROOT_SECRET_KEY")
    if bool(env_key) != bool(env_secret):
        raise StartupError("set both ATOLL_ROOT_ACCESS_KEY and ATOLL_ROOT_SECRET_KEY, or neither")

    async def run() -> RootCredentials:
        existing = [i for i in await meta.list_identities() if i.is_root]
        account, account_key, account_generated = _root_account(existing[0] if existing else None)
        if env_key:
            if len(env_key) < 3 or len(env_secret) < 8:
                raise StartupError("ATOLL_ROOT_ACCESS_KEY must have 3+ characters and ATOLL_ROOT_SECRET_KEY 8+")
            owner = existing[0].owner_id if existing else secrets.token_hex(32)
            for old in existing:
                if old.access_key != env_key:
                    await meta.delete_identity(old.access_key)
            await _put_root(Identity(env_key, env_secret, owner, "root", time.time(), True, account, account_key))
            credentials = RootCredentials(env_key, env_secret, False, account, account_key, account_generated)
        elif existing:
            root = existing[0]
            if (root.account_name, root.account_key) != (account, account_key):
                await _put_root(dataclasses.replace(root, account_name=account, account_key=account_key))
            credentials = RootCredentials(root.access_key, root.secret_key, False, account, account_key,
                                          account_generated)
        else:
            key = "AKATOLL" + secrets.token_hex(7).upper()
            secret = new_secret_key()
            await _put_root(Identity(key, secret, secrets.token_hex(32), "root", time.time(), True, account,
                                     account_key))
            credentials = RootCredentials(key, secret, True, account, account_key, account_generated)
        if credentials.generated or credentials.account_generated:
            _write_root_credentials(config, credentials)
        return credentials

    async def _put_root(identity: Identity) -> None:
        try:
            await meta.put_identity(identity)
        except errors.InvalidArgument:
            raise StartupError(f"the root account name {identity.account_name} is taken by another identity; set "
                               "ATOLL_ROOT_ACCOUNT_NAME to another") from None

    return asyncio.run(run())


def _write_root_credentials(config: Config, credentials: RootCredentials) -> None:
    """<data_dir>/root-credentials (mode 0600): what was generated at this start. A root account added to an
    older data directory leaves the S3 credentials in the file as they were."""
    path = os.path.join(config.data_dir, ROOT_CREDENTIALS_FILE)
    lines = ""
    if credentials.generated:
        lines += f"access_key_id = {credentials.access_key}\nsecret_access_key = {credentials.secret_key}\n"
    if credentials.account_generated:
        lines += f"account_name = {credentials.account_name}\naccount_key = {credentials.account_key}\n"
    mode = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if credentials.generated else os.O_APPEND)
    fd = os.open(path, mode, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(lines)


def build_app(config: Config, meta: SqlMetaStore, data: FileDataStore) -> tuple[S3App, Namespace, AccessLog | None]:
    ns = build_namespace(config, meta, data)
    access_log = None if config.access_log == "off" else AccessLog(config.access_log_path)
    ns.governor = qos.Governor(ns, runstate.node_dir(config.data_dir, config.node_name), shared=config.workers > 1)
    return S3App(ns, domains=config.s3_domains, access_log=access_log, max_skew=config.max_clock_skew,
                 governor=ns.governor), ns, access_log


def run_worker(config: Config, sock: socket.socket, slot: int = 0, admin: AdminListener | None = None,
               blob_sock: socket.socket | None = None) -> None:
    """One serving process: its own event loop, metadata connections and HTTP servers (S3, and Blob on
    ``blob_sock``)."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        meta, data = open_stores(config)
        view = cluster_view(config, meta)
        app, ns, access_log = build_app(config, meta, data)
        timeouts = Timeouts(keep_alive=config.keep_alive_timeout, head=config.request_head_timeout,
                            stall=config.stall_timeout)
        server = HttpServer(app, loop, timeouts,
                            on_exception=lambda req: log.exception("request %s failed", req.id))
        await server.listen(sock)
        blob_server = None
        if blob_sock is not None:
            blob_app = BlobApp(ns, domains=config.blob_domains, access_log=access_log, governor=ns.governor)
            blob_server = HttpServer(blob_app, loop, timeouts,
                                     on_exception=lambda req: log.exception("blob request %s failed", req.id))
            await blob_server.listen(blob_sock)
        admin_server = None
        if admin is not None and slot == 0:
            from atoll.admin.app import AdminApp
            from atoll.admin.dashboard import DashboardSettings

            admin_app = AdminApp(ns, admin.token, started=admin.started, workers=config.workers,
                                 access_log=access_log,
                                 peers_dir=health_dir(config.data_dir, config.node_name)
                                 if config.workers > 1 else None,
                                 dashboard=DashboardSettings(config.dashboard_sample_interval,
                                                             config.dashboard_history, config.dashboard_session_ttl))
            admin_server = HttpServer(admin_app, loop, timeouts,
                                      on_exception=lambda req: log.exception("admin request %s failed", req.id))
            await admin_server.listen(admin.sock)
            admin_app.dashboard.start()
        if slot == 0:  # one heartbeat per node: its primary worker's
            view.info = lambda: node_info(config, ns, [s for s in (server, blob_server) if s is not None])
            view.start_heartbeat()
        ns.start_background(primary=slot == 0)
        reclaim = loop.create_task(reclaim_later(meta, data, *_DEFERRED_RECLAIM)) \
            if slot == 0 and _DEFERRED_RECLAIM else None
        # The primary serves status from its own memory; the others publish their cold-endpoint health for it.
        publisher = HealthPublisher(ns.tier, health_dir(config.data_dir, config.node_name)).start() \
            if admin is not None and config.workers > 1 and slot != 0 else None
        # Everything allocated so far lives as long as the process: keep it out of the cyclic collector's scans,
        # which otherwise walk it on every full collection and show up as multi-millisecond latency spikes.
        gc.freeze()
        stop = loop.create_future()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        await stop
        log.info("worker %d stopping: finishing in-flight requests (up to %ss)", os.getpid(), config.shutdown_grace)
        if blob_server is not None:
            await asyncio.gather(server.stop(config.shutdown_grace), blob_server.stop(config.shutdown_grace))
        else:
            await server.stop(config.shutdown_grace)
        if admin_server is not None:
            await admin_server.stop(1.0)
            await admin_app.dashboard.stop()
        if publisher is not None:
            await publisher.stop()
        if reclaim is not None:
            reclaim.cancel()
        await ns.stop_background()
        await view.stop(cluster.process_owner())
        await meta.close()
        if access_log is not None:
            access_log.close()

    uvloop.run(main())


def serve(config: Config) -> None:
    started = time.time()
    node = config.node_name
    cluster.configure(node)
    meta, data = open_stores(config)
    try:
        lock = _lock_data_dir(config)  # noqa: F841 - held (and inherited by the workers) until the last one exits
        root = bootstrap_root(config, meta)
        # Other live nodes share the data directory and the metadata: their writes, claims and copies in flight
        # are not leftovers. Alone, everything in flight died with the last run, as on a single node.
        peers = asyncio.run(_peers_alive(config, meta))
        removed = data.remove_temp_files(older_than=time.time() - STALE_TEMP_SECONDS if peers else None)
        if removed:
            log.info("removed %d temp files left by an earlier crash", removed)
        unreclaimed_since = _reclaim_after_crash(config, meta, data, peers)
        if not peers:
            # No worker runs yet: drain claims of a process that died are void (the uploads are idempotent).
            # With peers, claims lapse (CLAIM_SECONDS): theirs may be uploads in flight.
            asyncio.run(meta.reset_drain_claims())
            # Likewise copies that were running: no partial blob was committed, and they are reported as failed.
            asyncio.run(meta.fail_pending_copies("The copy was interrupted: the server stopped.", time.time()))
        qos.reset_shared(runstate.node_dir(config.data_dir, node))  # rate-limit state and counters start afresh
        # Registered before serving: peers count this node (QoS shares) and leave its work alone from now on.
        asyncio.run(cluster_view(config, meta, started).beat())
    finally:
        meta.close_sync()
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        _check_port_free(config.s3_host, config.s3_port)
        hold = bind_socket(config.s3_host, config.s3_port, reuse_port=True)
    except OSError as exc:
        raise StartupError(f"cannot listen on {config.s3_address}: {exc.strerror}") from None
    blob_hold = None
    if config.blob_listen != "off":
        try:
            _check_port_free(config.blob_host, config.blob_port)
            blob_hold = bind_socket(config.blob_host, config.blob_port, reuse_port=True)
        except OSError as exc:
            hold.close()
            raise StartupError(f"cannot listen on blob_listen {config.blob_listen}: {exc.strerror} (choose another "
                               "with --blob-address, ATOLL_BLOB_LISTEN or blob_listen, or \"off\")") from None
    admin = None
    if config.admin_address != "off":
        try:
            admin = _admin_listener(config, started)
        except StartupError:
            hold.close()
            if blob_hold is not None:
                blob_hold.close()
            raise
    if root.generated:
        print(f"Generated root credentials (stored in {os.path.join(config.data_dir, ROOT_CREDENTIALS_FILE)}, "
              f"shown once):\n  access key id:     {root.access_key}\n  secret access key: {root.secret_key}",
              flush=True)
    if root.account_generated:
        print(f"Generated root Blob account (stored in {os.path.join(config.data_dir, ROOT_CREDENTIALS_FILE)}, "
              f"shown once):\n  account name: {root.account_name}\n  account key:  {root.account_key}",
              flush=True)
    print(f"Atoll S3 endpoint on http://{config.s3_address} (data in {os.path.abspath(config.data_dir)}, "
          f"{config.workers} worker{'s' if config.workers > 1 else ''})", flush=True)
    if blob_hold is not None:
        print(f"Azure Blob endpoint on http://{config.blob_listen}/{root.account_name} (account "
              f"{root.account_name})", flush=True)
    if admin is not None:
        from atoll.admin.token import token_path

        if admin.generated:
            print(f"Generated admin API token (stored in {token_path(config)}, shown once):\n  {admin.token}",
                  flush=True)
        print(f"Admin API and /metrics on http://{config.admin_address} (bearer token: ATOLL_ADMIN_TOKEN or "
              f"{token_path(config)})", flush=True)
        print(f"Dashboard on http://{config.admin_address}/ (sign in with an operator's access key and secret key, "
              "or the admin token)", flush=True)
    # Before any worker can write a blob; kept if leftovers could not be reclaimed, so the next start retries.
    try:
        runstate.begin(config.data_dir, started if unreclaimed_since is None else min(started, unreclaimed_since),
                       node)
        runstate.end(config.data_dir)  # a marker from before nodes: its start is in this node's marker now
    except OSError as exc:  # a full disk: serve anyway; only the reclamation after a crash of this run is lost
        log.warning("cannot record the server's start in %s (%s): after a crash, run atoll fsck",
                    runstate.node_dir(config.data_dir, node), exc.strerror)
    _DEFERRED_RECLAIM[:] = [unreclaimed_since, started] if peers and unreclaimed_since is not None else []
    try:
        if config.workers == 1:
            run_worker(config, hold, 0, admin, blob_hold)
            clean = True  # a worker that failed raised instead
        else:
            clean = _supervise(config, hold, data, admin, blob_hold)
    finally:
        _say_stopped(config)
    if clean:
        try:
            runstate.end(config.data_dir, node)
        except OSError as exc:  # the next start looks for leftovers that are not there: only time lost
            log.warning("cannot record the clean stop in %s (%s)", runstate.node_dir(config.data_dir, node),
                        exc.strerror)


def _lock_data_dir(config: Config) -> runstate.DataDirLock:
    try:
        # The processes of a server killed a moment ago may still be exiting, their lock with them.
        return runstate.DataDirLock.acquire(config.data_dir, wait=DATA_DIR_LOCK_WAIT, node=config.node_name)
    except runstate.DataDirBusy:
        raise StartupError(f"data directory {config.data_dir} is in use by another Atoll process of node "
                           f"{config.node_name} (a server, or atoll fsck --repair); stop it first, or give this "
                           "one another node name (--node, ATOLL_NODE)") from None
    except OSError as exc:
        raise StartupError(f"cannot lock data directory {config.data_dir}: {exc.strerror}") from None


def _reclaim_after_crash(config: Config, meta: SqlMetaStore, data: FileDataStore,
                         peers: bool = False) -> float | None:
    """After a server (node) that did not stop cleanly: delete the blobs it committed without a metadata row.
    Returns the crashed server's start if that failed or must wait (its leftovers are still to be reclaimed),
    else None. With live peers a blob without a row may be theirs, committed a moment before its row: the
    reclamation is deferred to the primary worker (``reclaim_later``), for blobs at least RECLAIM_AGE old."""
    markers = [m for m in (runstate.unclean_since(config.data_dir, config.node_name),
                           runstate.unclean_since(config.data_dir)) if m is not None]
    since = min(markers) if markers else None
    if since is None:
        return None
    if peers:
        log.info("the last run of node %s did not stop cleanly; other nodes are running, so its unreferenced "
                 "blobs are looked for once they are %ds old", config.node_name, RECLAIM_AGE)
        return since
    try:
        reclaimed = asyncio.run(reclaim_orphan_blobs(meta, data, since))
    except Exception as exc:  # noqa: BLE001 - serving matters more; fsck and the next start can finish this
        log.warning("could not reclaim what the last server left after its crash (%s); run atoll fsck", exc)
        return since
    log.info("the last server did not stop cleanly: removed %d unreferenced blobs (%d looked up where it wrote, "
             "%.2fs)", reclaimed.removed, reclaimed.examined, reclaimed.seconds)
    return None


def cluster_view(config: Config, meta, started: float | None = None) -> cluster.Cluster:
    """This process's view of the cluster (``cluster.current()``), for node ``config.node_name``."""
    cluster.configure(config.node_name)
    view = cluster.start(cluster.Cluster(meta, config.node_name, node_timeout=config.node_timeout,
                                         heartbeat_interval=config.heartbeat_interval, workers=config.workers))
    view.address = config.s3_address
    view.info = lambda: _addresses(config)
    view.started = _NODE_STARTED[0] if started is None else started
    _NODE_STARTED[0] = view.started
    return view


def _addresses(config: Config) -> dict:
    return {"s3": config.s3_address, "blob": config.blob_listen, "admin": config.admin_address}


def node_info(config: Config, ns: Namespace, servers: list[HttpServer]) -> dict:
    """What a node's heartbeat tells the others and ``atoll status`` (the primary worker's view)."""
    tier = ns.tier
    drainer = getattr(tier, "drainer", None)
    runner = getattr(tier, "job_runner", None)
    current = getattr(runner, "current", None)
    return {**_addresses(config), "supervisor_pid": os.getppid() if config.workers > 1 else os.getpid(),
            "connections": sum(len(s.connections) for s in servers),
            "draining": len(drainer._active) if drainer is not None else 0,
            "job": current.job.job_id if current is not None else "",
            "fill_readers": tier.filler.readers_total() if tier is not None else 0}


def _say_stopped(config: Config) -> None:
    """Mark the node stopped in the metadata, so that peers count it out (QoS shares) at once."""
    try:
        meta, _ = open_stores(config)
    except StartupError:
        return
    try:
        view = cluster_view(config, meta)
        asyncio.run(view.beat(stopped=True))
    except Exception as exc:  # noqa: BLE001 - its heartbeat goes stale anyway
        log.warning("could not record the stop of node %s: %s", config.node_name, exc)
    finally:
        meta.close_sync()


async def _peers_alive(config: Config, meta) -> bool:
    return await cluster.Cluster(meta, config.node_name, node_timeout=config.node_timeout).peers_alive()


async def reclaim_later(meta, data: FileDataStore, since: float, until: float) -> None:
    """The deferred reclamation after a crash of this node while peers ran: once every blob this node's crashed
    run can have left is RECLAIM_AGE old (a peer's write commits its row within moments of its blob), delete the
    unreferenced ones among the blobs changed between ``since`` and ``until`` (this run's start)."""
    await asyncio.sleep(max(0.0, until + RECLAIM_AGE - time.time()))
    try:
        reclaimed = await reclaim_orphan_blobs(meta, data, since, changed_before=until)
    except Exception as exc:  # noqa: BLE001 - fsck finds them
        log.warning("could not reclaim what node %s left after its crash (%s); run atoll fsck",
                    cluster.node_name(), exc)
        return
    log.info("removed %d unreferenced blobs left by the crashed run of this node (%d looked up, %.2fs)",
             reclaimed.removed, reclaimed.examined, reclaimed.seconds)


def _admin_listener(config: Config, started: float) -> AdminListener:
    """Bind the admin port (a busy port is a start-up error like a busy S3 port) and settle its token."""
    from atoll.admin.token import TokenError, ensure_token

    host, _, port = config.admin_address.rpartition(":")
    try:
        _check_port_free(host.strip("[]"), int(port))
        sock = bind_socket(host.strip("[]"), int(port), reuse_port=False)
    except OSError as exc:
        raise StartupError(f"cannot listen on admin_address {config.admin_address}: {exc.strerror} (choose "
                           "another with ATOLL_ADMIN_ADDRESS or admin_address, or \"off\")") from None
    try:
        token, generated = ensure_token(config)
    except (TokenError, OSError) as exc:
        sock.close()
        raise StartupError(f"admin API token: {exc}") from None
    return AdminListener(sock, token, started, generated)


def _check_port_free(host: str, port: int) -> None:
    """Raise EADDRINUSE if anything listens on the port, another Atoll included: SO_REUSEPORT alone would let a
    second server (with another data directory) silently take a share of the first one's connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def _supervise(config: Config, hold: socket.socket, data: FileDataStore, admin: AdminListener | None = None,
               blob_hold: socket.socket | None = None) -> bool:
    """Fork workers, each with its own SO_REUSEPORT listening socket; restart any that dies unexpectedly.
    Returns whether every worker stopped cleanly (none died: nothing can be left half done)."""
    hold.close()  # the workers' sockets hold the port from here on
    if blob_hold is not None:
        blob_hold.close()
    children: dict[int, int] = {}
    started: dict[int, float] = {}  # slot -> when its current worker was started
    delay: dict[int, float] = {}  # slot -> the last restart delay
    stopping = False

    def spawn(slot: int) -> None:
        # Stop signals wait while forking: a child must neither run ``forward`` nor die by SIGTERM before its own
        # handlers are in place (run_worker unblocks them), and no child may be born after ``forward`` has run.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            if stopping:
                return
            sock = bind_socket(config.s3_host, config.s3_port, reuse_port=True)
            blob_sock = bind_socket(config.blob_host, config.blob_port, reuse_port=True) \
                if blob_hold is not None else None
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                if admin is not None and slot != 0:
                    admin.sock.close()  # only the primary serves the admin port
                code = 0
                try:
                    run_worker(config, sock, slot, admin, blob_sock)
                except BaseException:  # noqa: BLE001
                    log.exception("worker crashed")
                    code = 1
                os._exit(code)
            sock.close()
            if blob_sock is not None:
                blob_sock.close()
            children[pid] = slot
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def forward(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for slot in range(config.workers):
        spawn(slot)
        started[slot] = time.monotonic()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    clean = True
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        slot = children.pop(pid, None)
        clean = clean and status == 0 and stopping
        mark_metrics_dead(pid)
        # A worker killed mid-upload leaves temp files that nobody will finish; the others' are left alone.
        removed = data.remove_temp_files(pid)
        if removed:
            log.info("removed %d temp files of worker %d", removed, pid)
        if slot is not None and not stopping:
            # Back off when workers die young (a broken disk, a bad config found late): 0.2 s doubling to 30 s.
            now = time.monotonic()
            quick = now - started.get(slot, 0.0) < 10.0
            delay[slot] = min(delay.get(slot, 0.1) * 2, 30.0) if quick else 0.2
            log.error("worker %d exited (status %d); starting a new one in %.1fs", pid, status, delay[slot])
            wake = now + delay[slot]
            while not stopping and time.monotonic() < wake:  # a SIGTERM meanwhile must not wait out the delay
                time.sleep(0.05)
            spawn(slot)
            started[slot] = time.monotonic()
    return clean
