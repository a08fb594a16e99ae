"""Private database servers that a test owns and may break: a PostgreSQL cluster and redis-servers
on free ports of their own, started, killed and restarted by PID.

Nothing here touches the machine's shared servers. Every process is started by this module and
stopped by its PID (the postmaster's process group for PostgreSQL) in a finalizer, even when the
test fails. A missing binary skips the tests with the reason, except under ``CI=true``, where it
fails them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .conftest import IN_CI
from .helpers import free_port, stop_process

Setting = str | int | float

#: Settings every private cluster starts with: fast (no durability needed) and small.
PG_DEFAULTS: dict[str, Setting] = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "autovacuum": "off",
}

#: Settings that only exist from some major version on; left out on older servers.
PG_SETTING_SINCE = {"reserved_connections": 16}


def missing(what: str) -> NoReturn:
    """Skip (or, under ``CI=true``, fail) because ``what`` is not available here."""
    if IN_CI:
        pytest.fail(f"CI=true refuses to skip: {what}")
    pytest.skip(what)


def _deadline(seconds: float) -> Callable[[], bool]:
    give_up = time.monotonic() + seconds
    return lambda: time.monotonic() < give_up


# --- PostgreSQL --------------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has initdb, postgres and pg_ctl."""
    override = os.environ.get("SERVLETSESSION_TEST_PG_BIN")
    candidates = [Path(override)] if override else []

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for candidate in candidates:
        if all((candidate / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return candidate
    return None


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own in a temporary directory, on a free port.

    ``initdb`` runs once per test session (see :class:`PostgresFactory`); each instance starts
    from a copy of that template. When the tests run as root, every PostgreSQL program runs as the
    ``postgres`` OS user (PostgreSQL refuses to run as root) and the directory belongs to it.
    """

    def __init__(
        self,
        bin_dir: Path,
        directory: Path,
        *,
        run_as: str | None,
        settings: Mapping[str, Setting] | None = None,
    ) -> None:
        self.bin_dir = bin_dir
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self.run_as = run_as
        self.port = free_port()
        self.settings: dict[str, Setting] = {**PG_DEFAULTS, **(settings or {})}
        self._pid: int | None = None

    @functools.cached_property
    def version(self) -> int:
        """The major version, from ``postgres --version``."""
        output = subprocess.run([str(self.bin_dir / "postgres"), "--version"],
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
        match = re.search(r"(\d+)(?:\.\d+)?", output)
        assert match is not None, output
        return int(match.group(1))

    # --- addresses ---

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    # --- control ---

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program (``pg_ctl``, ``initdb``...) as the cluster's OS user."""
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}\n"
                f"--- {self.log} ---\n{self.log_tail()}"
            )
        return result

    def start(self, **settings: Setting) -> None:
        """Start (or start again, on the same port) and wait until it accepts connections.
        ``settings`` are added to the cluster's settings for this and later starts."""
        self.settings.update(settings)
        version = self.version
        options = [f"-p {self.port}", f"-k {self.directory}"]
        options += [
            f"-c {name}={value}"
            for name, value in self.settings.items()
            if version >= PG_SETTING_SINCE.get(name, 0)
        ]
        self.run("pg_ctl", "-D", str(self.data), "-o", " ".join(options),
                 "-l", str(self.log), "-w", "-t", "30", "start")  # fmt: skip
        self._pid = self.postmaster_pid()

    def kill(self, *, immediate: bool = True) -> None:
        """Take the server down now: ``immediate`` is ``pg_ctl stop -m immediate`` (SIGQUIT: no
        shutdown checkpoint, crash recovery on the next start); else ``-m fast`` (clients get
        57P01 and the server shuts down cleanly). Waits until the postmaster is gone."""
        self.run("pg_ctl", "-D", str(self.data), "-m", "immediate" if immediate else "fast",
                 "-w", "-t", "30", "stop")  # fmt: skip
        self._wait_gone()

    def shutdown_smart(self) -> None:
        """``pg_ctl stop -m smart`` without waiting: the server stops accepting new connections
        (57P03 "the database system is shutting down") and exits once the last session ends.
        Returns once the postmaster has begun shutting down."""
        self.run("pg_ctl", "-D", str(self.data), "-m", "smart", "-W", "stop")
        ready = _deadline(10)
        while self.status() not in ("stopping", None):
            if not ready():
                raise RuntimeError(f"the postmaster did not begin to shut down: {self.status()}")
            time.sleep(0.01)

    def wait_stopped(self, seconds: float = 10) -> None:
        self._wait_gone(seconds)

    def stop(self) -> None:
        """Teardown: stop whatever this instance started, by the postmaster's PID; no-op if it is
        not running. Falls back to SIGKILL of the postmaster's process group (pg_ctl starts the
        postmaster as a session leader, so the group is exactly this cluster's processes)."""
        pid = self.postmaster_pid() or self._pid
        if pid is None or not _alive(pid) or not self._is_postmaster(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # in case a test left it stopped
        with contextlib.suppress(Exception):
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "10", "stop")
        if _alive(pid) and self._is_postmaster(pid):
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
        self._wait_gone(10, pid)

    def _is_postmaster(self, pid: int) -> bool:
        """Whether ``pid`` is this cluster's postmaster (a stale postmaster.pid may name a PID
        that some other process has by now)."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            return not Path("/proc/self").exists()  # no /proc here: trust the PID
        return str(self.data).encode() in argv

    # --- state ---

    def make_standby(self) -> None:
        """Before :meth:`start`: start as a standby (``standby.signal``) with no primary to
        follow. With ``hot_standby=off`` it refuses every connection with 57P03."""
        signal_file = self.data / "standby.signal"
        signal_file.touch()
        if self.run_as is not None:
            owner = pwd.getpwnam(self.run_as)
            os.chown(signal_file, owner.pw_uid, owner.pw_gid)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def status(self) -> str | None:
        """The postmaster's own status line in ``postmaster.pid`` (``starting``, ``ready``,
        ``standby``, ``stopping``), or ``None`` when it is not running."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return None
        return lines[7].strip() if len(lines) > 7 else "starting"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _wait_gone(self, seconds: float = 30, pid: int | None = None) -> None:
        pid = pid or self._pid
        waiting = _deadline(seconds)
        while pid is not None and _alive(pid):
            if not waiting():
                raise RuntimeError(f"postmaster {pid} is still running")
            time.sleep(0.01)

    def __repr__(self) -> str:
        return f"<PrivatePostgres port={self.port} dir={self.directory}>"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child (not ours: the postmaster's parent is pg_ctl's exited shell) still answers
    # kill(0); /proc says whether it has really exited.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


class PostgresFactory:
    """Hands out :class:`PrivatePostgres` clusters: one ``initdb`` per test session, copied for
    each cluster, and a cluster that a test has finished with is stopped and handed out again
    (with the next test's settings and a new port) instead of being copied anew — copying a data
    directory costs more than restarting a server. A standby is never reused."""

    def __init__(self, bin_dir: Path, run_as: str | None) -> None:
        self.bin_dir = bin_dir
        self.run_as = run_as
        self.root = Path(tempfile.mkdtemp(prefix="ss-pg-"))
        self._owner = pwd.getpwnam(run_as) if run_as else None
        self._chown(self.root)
        self._template: Path | None = None
        self._idle: list[PrivatePostgres] = []
        self.made: list[PrivatePostgres] = []

    def _chown(self, path: Path) -> None:
        if self._owner is not None:
            os.chown(path, self._owner.pw_uid, self._owner.pw_gid)

    def template(self) -> Path:
        if self._template is None:
            template = self.root / "template"
            template.mkdir()
            self._chown(template)
            PrivatePostgres(self.bin_dir, template, run_as=self.run_as).run(
                "initdb", "-D", str(template / "data"), "-A", "trust", "-U", "postgres",
                "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
                "--wal-segsize=1",
            )  # fmt: skip
            self._template = template / "data"
        return self._template

    def make(self, **settings: Setting) -> PrivatePostgres:
        """A new cluster, copied from the template, not yet started."""
        template = self.template()
        directory = Path(tempfile.mkdtemp(prefix="c", dir=self.root))
        self._chown(directory)
        # As root, cp -a keeps the files the postgres user's; otherwise they are ours already.
        subprocess.run(["cp", "-a", str(template), str(directory / "data")], check=True, timeout=60)
        cluster = PrivatePostgres(self.bin_dir, directory, run_as=self.run_as, settings=settings)
        self.made.append(cluster)
        return cluster

    def acquire(self, *, standby: bool = False, **settings: Setting) -> PrivatePostgres:
        """A stopped cluster with exactly these settings (on top of :data:`PG_DEFAULTS`) and a
        fresh port: an idle one if there is one, else a new copy."""
        if standby or not self._idle:
            cluster = self.make(**settings)
            if standby:
                cluster.make_standby()
            return cluster
        cluster = self._idle.pop()
        cluster.settings = {**PG_DEFAULTS, **settings}
        cluster.port = free_port()
        return cluster

    def release(self, cluster: PrivatePostgres) -> None:
        """Stop the cluster; keep it for the next test unless it is a standby or would not stop
        (then its directory goes)."""
        reusable = not (cluster.data / "standby.signal").exists()
        try:
            cluster.stop()
        except Exception:
            reusable = False
            raise
        finally:
            if reusable:
                self._idle.append(cluster)
            else:
                self.made.remove(cluster)
                shutil.rmtree(cluster.directory, ignore_errors=True)

    def close(self) -> None:
        try:
            for cluster in self.made:
                with contextlib.suppress(Exception):
                    cluster.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_factory() -> Iterator[PostgresFactory]:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        missing("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    run_as: str | None = None
    if os.geteuid() == 0:
        run_as = "postgres"
        try:
            pwd.getpwnam(run_as)
        except KeyError:
            missing("running as root and there is no 'postgres' OS user to run PostgreSQL as")
        if shutil.which("runuser") is None:
            missing("running as root and runuser is not installed")
    factory = PostgresFactory(bin_dir, run_as)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def private_postgres(
    postgres_factory: PostgresFactory, request: pytest.FixtureRequest
) -> Iterator[PrivatePostgres]:
    """A started private cluster. Parametrize it indirectly with a dict of settings, e.g.
    ``@pytest.mark.parametrize("private_postgres", [{"max_connections": 3}], indirect=True)``;
    ``"standby": True`` among them starts it as a standby (see :meth:`make_standby`)."""
    settings: dict[str, Setting | bool] = dict(getattr(request, "param", {}))
    standby = bool(settings.pop("standby", False))
    cluster = postgres_factory.acquire(standby=standby, **settings)
    try:
        cluster.start()
        yield cluster
    finally:
        postgres_factory.release(cluster)


# --- Redis -------------------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of the test's own on a free port, in a temporary directory, with no
    persistence unless ``options`` ask for it. ``replicaof`` makes it a replica of another."""

    def __init__(
        self,
        directory: Path,
        *,
        replicaof: PrivateRedis | int | None = None,
        options: Mapping[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.log = directory / "redis.log"
        self.port = free_port()
        self.replicaof = replicaof.port if isinstance(replicaof, PrivateRedis) else replicaof
        self.options = dict(options or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self, *, wait: bool = True) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.directory),
                "--logfile", str(self.log)]  # fmt: skip
        if self.replicaof is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replicaof)]
        for name, value in self.options.items():
            argv += [f"--{name}", value]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait:
            self.wait_listening()

    def wait_listening(self, seconds: float = 10) -> None:
        """Until the server accepts connections and answers (any answer: a loading or
        stale replica answers with an error, which is still an answer)."""
        assert self.process is not None
        no_retry = Retry(NoBackoff(), 0)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, retry=no_retry)
        waiting = _deadline(seconds)
        try:
            while waiting():
                try:
                    client.ping()
                    return
                except redis.ConnectionError as exc:
                    if not isinstance(exc.__cause__ or exc.__context__, OSError):
                        return  # an answer: LOADING, NOAUTH, max number of clients...
                except redis.ResponseError:
                    return
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited {self.process.returncode}:\n{self.log_tail()}"
                    )
                time.sleep(0.01)
        finally:
            client.close()
        raise RuntimeError(f"the private redis-server did not start:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL, by PID, and reap."""
        assert self.process is not None
        stop_process(self.process, kill=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process, kill=True)


class RedisFactory:
    """Makes :class:`PrivateRedis` servers in one directory and stops them all at the end:
    ``factory(maxclients="1")``, ``factory(replicaof=other)``, and for directives with dashes
    ``factory(config={"min-replicas-to-write": "1"})``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[PrivateRedis] = []

    def __call__(
        self,
        *,
        replicaof: PrivateRedis | int | None = None,
        start: bool = True,
        config: Mapping[str, str] | None = None,
        **options: str,
    ) -> PrivateRedis:
        directory = Path(tempfile.mkdtemp(prefix="redis-", dir=self.root))
        options = {**(config or {}), **options}
        server = PrivateRedis(directory, replicaof=replicaof, options=options)
        self.made.append(server)
        if start:
            server.start()
        return server

    def close(self) -> None:
        for server in self.made:
            with contextlib.suppress(Exception):
                server.stop()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[RedisFactory]:
    """Makes private redis-servers (see :class:`RedisFactory`); all of them are stopped, by PID,
    at the end of the test."""
    if shutil.which("redis-server") is None:
        missing("redis-server is not installed")
    factory = RedisFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def private_redis(redis_factory: RedisFactory) -> PrivateRedis:
    """One started private redis-server."""
    return redis_factory()


# --- Redis Cluster -----------------------------------------------------------------------------

#: ``cluster-node-timeout`` of private clusters, in milliseconds: short, so that a killed master
#: is marked FAIL (and a replica promoted) within a few seconds, but not so short that a busy
#: machine makes the nodes suspect each other.
CLUSTER_NODE_TIMEOUT_MS = 2000


@functools.cache
def redis_server_version() -> tuple[int, ...]:
    """``redis-server --version``, as a tuple of ints."""
    argv = ["redis-server", "--version"]
    output = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10).stdout
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", output)
    assert match is not None, output
    return tuple(int(part) for part in match.groups())


def _free_ports(count: int, taken: set[int], *, bus_offset: int = 0) -> list[int]:
    """``count`` distinct free ports, none in ``taken``; with ``bus_offset`` each port's
    ``port + bus_offset`` (the cluster bus, on Redis < 7) must be free and valid too."""
    ports: list[int] = []
    for _ in range(1000):
        port = free_port()
        if port in taken or port + bus_offset > 65535:
            continue
        if bus_offset:
            with contextlib.suppress(OSError), socket.socket() as probe:
                probe.bind(("127.0.0.1", port + bus_offset))
                ports.append(port)
                taken.update((port, port + bus_offset))
        else:
            ports.append(port)
            taken.add(port)
        if len(ports) == count:
            return ports
    raise RuntimeError("no free ports for a private Redis Cluster")


class PrivateRedisCluster:
    """A Redis Cluster of the test's own: 3 masters (``replicas=True``: and a replica of each, 6
    nodes) on free loopback ports, each a :class:`PrivateRedis` in ``root/<port>`` with its
    ``nodes-<port>.conf`` and an AOF fsynced on every write (``appendfsync always``), so that a
    node killed with SIGKILL and :meth:`restart`-ed rejoins with its slots and its data.

    Node ``i`` is ``nodes[i]`` / ``ports[i]``; right after :meth:`start` nodes 0-2 are the
    masters (slots 0-5460, 5461-10922, 10923-16383) and nodes 3-5 the replicas. :attr:`url`
    (``redis://127.0.0.1:<ports[0]>/0``) is for ``redis.asyncio.RedisCluster.from_url``, which
    discovers the others.

    Redis's default ``cluster-require-full-coverage yes`` is kept: once a master without a
    replica is marked FAIL (about ``node_timeout_ms`` after it died), *every* node answers
    CLUSTERDOWN until it is back. Pass ``config={"cluster-require-full-coverage": "no"}`` for
    the other behaviour.
    """

    def __init__(
        self,
        root: Path,
        *,
        replicas: bool = False,
        node_timeout_ms: int = CLUSTER_NODE_TIMEOUT_MS,
        config: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        count = 6 if replicas else 3
        taken: set[int] = set()
        # Redis >= 7 takes the cluster bus port as a setting; older ones use port + 10000, which
        # must then be free too (and below 65536, so not every ephemeral port will do).
        cluster_port = redis_server_version() >= (7,)
        ports = _free_ports(count, taken, bus_offset=0 if cluster_port else 10000)
        bus_ports = _free_ports(count, taken) if cluster_port else [None] * count
        self.nodes: list[PrivateRedis] = []
        for port, bus_port in zip(ports, bus_ports, strict=True):
            directory = root / str(port)
            directory.mkdir(parents=True)
            options = {
                "cluster-enabled": "yes",
                "cluster-config-file": f"nodes-{port}.conf",
                "cluster-node-timeout": str(node_timeout_ms),
                "appendonly": "yes",
                "appendfsync": "always",
                # A replica's first sync now, not after the default 5 s diskless delay: until
                # then it could not take over from its master.
                "repl-diskless-sync-delay": "0",
                **(config or {}),
            }
            if bus_port is not None:
                options["cluster-port"] = str(bus_port)
            node = PrivateRedis(directory, options=options)
            node.port = port
            self.nodes.append(node)

    # --- addresses ---

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def pids(self) -> list[int | None]:
        return [node.pid for node in self.nodes]

    def running(self, i: int) -> bool:
        process = self.nodes[i].process
        return process is not None and process.poll() is None

    # --- control ---

    def start(self, *, seconds: float = 60) -> None:
        """Start every node, join them into one cluster, wait until all say cluster_state:ok.
        Stops whatever it started if that fails."""
        try:
            for node in self.nodes:
                node.start(wait=False)
            for node in self.nodes:
                node.wait_listening()
            argv = ["redis-cli", "--cluster", "create",
                    *(f"127.0.0.1:{port}" for port in self.ports), "--cluster-yes"]  # fmt: skip
            if self.replicas:
                argv += ["--cluster-replicas", "1"]
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=seconds, check=False
            )
            if result.returncode != 0 or "[OK] All 16384 slots covered" not in result.stdout:
                raise RuntimeError(
                    f"redis-cli --cluster create exited {result.returncode}:\n"
                    f"{result.stdout}\n{result.stderr}"
                )
            self.wait_ok(seconds)
            if self.replicas:
                self._order_masters_first()
        except BaseException:
            self.stop()
            raise

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` by its PID, and reap it. Its nodes.conf and AOF stay."""
        self.nodes[i].kill()

    def restart(self, i: int, *, wait: bool = True, seconds: float = 30) -> None:
        """Start node ``i`` again on its port and in its directory: it reloads its AOF and
        nodes.conf and rejoins. With ``wait``, returns once every node says cluster_state:ok."""
        if self.running(i):
            raise RuntimeError(f"node {i} (port {self.ports[i]}) is still running")
        self.nodes[i].start()
        if wait:
            self.wait_ok(seconds)

    def stop(self) -> None:
        """Teardown: stop the nodes this cluster started, by PID (SIGTERM, SIGKILL after 5 s);
        remove its directory."""
        try:
            for node in self.nodes:
                if node.process is None or node.process.poll() is not None:
                    continue
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.process.pid, signal.SIGCONT)  # in case a test left it stopped
                # SIGTERM first: redis-server then ends its forked children (an AOF rewrite)
                # too, which a SIGKILL would leave running for a moment.
                with contextlib.suppress(Exception):
                    stop_process(node.process, grace=5)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # --- state ---

    def client(self, i: int) -> redis.Redis:
        """A plain (non-cluster) client of node ``i`` that fails fast; close it after use."""
        return redis.Redis(port=self.ports[i], socket_connect_timeout=0.5, socket_timeout=2,
                           retry=Retry(NoBackoff(), 0), decode_responses=True)  # fmt: skip

    def cluster_info(self, i: int) -> dict[str, str]:
        """Node ``i``'s ``CLUSTER INFO``, as strings."""
        client = self.client(i)
        try:
            reply = client.execute_command("CLUSTER INFO")  # redis-py parses it into a dict
        finally:
            client.close()
        if not isinstance(reply, dict):
            text = reply.decode() if isinstance(reply, bytes) else str(reply)
            reply = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {str(name): str(value).strip() for name, value in reply.items()}

    def healthy(self) -> bool:
        """Every node runs and says cluster_state:ok, knows every node and sees every slot
        served (none in PFAIL/FAIL); with replicas, all agree on 3 masters and every replica's
        link to its master is up."""
        try:
            infos = [self.cluster_info(i) for i in range(len(self.nodes))]
        except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError):
            return False
        if not all(
            info.get("cluster_state") == "ok"
            and info.get("cluster_known_nodes") == str(len(self.nodes))
            and info.get("cluster_slots_ok") == "16384"
            for info in infos
        ):
            return False
        if not self.replicas:
            return True
        return self.roles_settled() and all(self.replica_synced(i) for i in range(len(self.nodes)))

    def replica_synced(self, i: int) -> bool:
        """Node ``i`` is a master, or a replica whose link to its master is up (its ``ROLE``
        says ``connected``: the initial sync is over)."""
        client = self.client(i)
        try:
            role = client.execute_command("ROLE")
        except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError):
            return False
        finally:
            client.close()
        return str(role[0]) == "master" or str(role[3]) == "connected"

    def wait_ok(self, seconds: float = 30) -> None:
        """Until :meth:`healthy` (polled every 50 ms), or RuntimeError after ``seconds``."""
        self.wait_until(self.healthy, seconds, "cluster_state:ok on every node")

    def wait_state(self, state: str, seconds: float = 30) -> None:
        """Until every running node says ``cluster_state:<state>`` (``"fail"``: the others have
        marked a killed master FAIL)."""

        def reached() -> bool:
            for i in range(len(self.nodes)):
                if not self.running(i):
                    continue
                try:
                    if self.cluster_info(i).get("cluster_state") != state:
                        return False
                except (redis.ConnectionError, redis.TimeoutError):
                    return False
            return True

        self.wait_until(reached, seconds, f"cluster_state:{state} on every running node")

    def wait_until(self, condition: Callable[[], bool], seconds: float, what: str) -> None:
        waiting = _deadline(seconds)
        while not condition():
            for i, node in enumerate(self.nodes):
                if node.process is not None and node.process.poll() not in (None, -9):
                    raise RuntimeError(f"node {i} exited {node.process.returncode}:\n"
                                       f"{node.log_tail()}")  # fmt: skip
            if not waiting():
                raise RuntimeError(f"no {what} after {seconds} s:\n{self.describe()}")
            time.sleep(0.05)

    def role(self, i: int) -> str:
        """``"master"`` or ``"slave"``, as node ``i`` says."""
        client = self.client(i)
        try:
            return str(client.execute_command("ROLE")[0])
        finally:
            client.close()

    def node_of_slot(self, slot: int) -> int:
        """The index of the node that serves ``slot``, as node 0 (or the first running node)
        sees it."""
        for i in range(len(self.nodes)):
            if not self.running(i):
                continue
            client = self.client(i)
            try:
                ranges = client.execute_command("CLUSTER SLOTS")
            finally:
                client.close()
            for start, end, master, *_ in ranges:
                if int(start) <= slot <= int(end):
                    return self.ports.index(int(master[1]))
            raise RuntimeError(f"slot {slot} is not served: {ranges}")
        raise RuntimeError("no node is running")

    def node_of_key(self, key: str | bytes) -> int:
        """The index of the node that serves ``key``'s slot."""
        from redis.crc import key_slot

        return self.node_of_slot(key_slot(key.encode() if isinstance(key, str) else key))

    def describe(self) -> str:
        lines = []
        for i, node in enumerate(self.nodes):
            state = "running" if self.running(i) else "down"
            try:
                info = self.cluster_info(i) if self.running(i) else {}
            except Exception as exc:
                info = {"error": repr(exc)}
            summary = {k: v for k, v in info.items() if k in
                       ("cluster_state", "cluster_slots_ok", "cluster_slots_pfail",
                        "cluster_slots_fail", "cluster_known_nodes", "error")}  # fmt: skip
            lines.append(f"node {i} port {node.port} pid {node.pid} {state} {summary}")
            lines += [f"    {line}" for line in node.log_tail(5).splitlines()]
        return "\n".join(lines)

    def cluster_nodes(self, i: int) -> dict[int, tuple[str, str, str]]:
        """Node ``i``'s ``CLUSTER NODES``: port -> (node id, flags, master id or "-")."""
        client = self.client(i)
        try:
            reply = client.execute_command("CLUSTER NODES")  # redis-py parses it into a dict
        finally:
            client.close()
        if isinstance(reply, str | bytes):
            text = reply.decode() if isinstance(reply, bytes) else reply
            rows = [line.split()[:4] for line in text.splitlines() if line.strip()]
            reply = {
                address.split("@")[0]: {"node_id": node_id, "flags": flags, "master_id": master}
                for node_id, address, flags, master in rows
            }
        return {
            int(str(address).rsplit(":", 1)[1]): (
                str(row["node_id"]),
                str(row["flags"]),
                str(row["master_id"]),
            )
            for address, row in reply.items()
        }

    def roles_settled(self) -> bool:
        """Every node's ``CLUSTER NODES`` has exactly 3 masters, and the others are their
        replicas (right after ``--cluster create`` a node may not have heard of them yet)."""
        try:
            tables = [self.cluster_nodes(i) for i in range(len(self.nodes))]
        except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError):
            return False
        for table in tables:
            masters = {node_id for node_id, flags, _ in table.values() if "master" in flags}
            others = [master for _, flags, master in table.values() if "master" not in flags]
            if len(masters) != 3 or any(master not in masters for master in others):
                return False
        return True

    def _order_masters_first(self) -> None:
        """redis-cli picks the masters; list them first, in slot order, and each replica at its
        master's index + 3."""
        self.wait_until(self.roles_settled, 30, "agreement on masters and replicas")
        table = self.cluster_nodes(0)
        client = self.client(0)
        try:
            ranges = sorted(client.execute_command("CLUSTER SLOTS"))  # by first slot
        finally:
            client.close()
        order = [int(master[1]) for _, _, master, *_ in ranges]
        for master_port in list(order):
            master_id = table[master_port][0]
            order += [port for port, (_, _, master) in table.items() if master == master_id]
        by_port = {node.port: node for node in self.nodes}
        assert sorted(order) == sorted(by_port), table
        self.nodes = [by_port[port] for port in order]

    def __repr__(self) -> str:
        return f"<PrivateRedisCluster ports={self.ports} dir={self.root}>"


@pytest.fixture
def private_redis_cluster(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[PrivateRedisCluster]:
    """A started Redis Cluster of this test's own (3 masters, no replicas), which the test may
    kill and restart nodes of; stopped by PID at the end. Parametrize it indirectly with the
    keyword arguments of :func:`new_redis_cluster`, e.g.
    ``@pytest.mark.parametrize("private_redis_cluster", [{"replicas": True}], indirect=True)``.
    For a shared one that tests must not break, see ``redis_cluster`` in conftest.py."""
    options: dict[str, Any] = dict(getattr(request, "param", {}))
    cluster = new_redis_cluster(tmp_path / "cluster", **options)
    try:
        yield cluster
    finally:
        cluster.stop()


def new_redis_cluster(
    root: Path,
    *,
    replicas: bool = False,
    node_timeout_ms: int = CLUSTER_NODE_TIMEOUT_MS,
    config: Mapping[str, str] | None = None,
) -> PrivateRedisCluster:
    """A started :class:`PrivateRedisCluster` in ``root``, or skip (under ``CI=true``: fail)
    when redis-server or redis-cli is missing."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed (needed for a private Redis Cluster)")
    for attempt in range(3):
        # Fresh free ports on each attempt: another process may take one between free_port()
        # and redis-server's bind (the node then exits at once, "Address already in use").
        cluster = PrivateRedisCluster(
            root, replicas=replicas, node_timeout_ms=node_timeout_ms, config=config
        )
        try:
            cluster.start()  # stops what it started, and removes root, if it fails
        except RuntimeError:
            if attempt == 2:
                raise
            continue
        return cluster
    raise AssertionError("unreachable")
