"""The local Kafka (KRaft) and Redis (and optionally a 3-master Redis Cluster) that
``journey stack up|down|status`` runs, without Docker. Dev tooling: the product never imports it."""

from __future__ import annotations

import base64
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.devtools import redis_cluster
from streams.settings import Settings

Echo = Callable[[str], None]

KAFKA_READY_LINE = "Kafka Server started"
KAFKA_TIMEOUT = 90.0
REDIS_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
FETCH_TIMEOUT = 900.0
TAIL_LINES = 30
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})

# Children started by this process, by pid: they are reaped through their Popen (so it
# knows they exited) and stay referenced so CPython does not warn about them while this
# process runs; they are meant to outlive it.
_STARTED: dict[int, subprocess.Popen[bytes]] = {}

POM = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by `journey stack up`: only used to fetch the Kafka broker jars. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.journey-tracker</groupId>
  <artifactId>kafka-libs</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <!-- The broker jar has no logging backend of its own; 3.9.x ships with reload4j. -->
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-reload4j</artifactId>
      <version>1.7.36</version>
    </dependency>
    <dependency>
      <groupId>ch.qos.reload4j</groupId>
      <artifactId>reload4j</artifactId>
      <version>1.2.25</version>
    </dependency>
  </dependencies>
</project>
"""

SERVER_PROPERTIES = """# Written by `journey stack up` on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=4
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=2097152
auto.create.topics.enable=true
"""

LOG4J_PROPERTIES = """# Written by `journey stack up`: everything at INFO to stdout, which goes to kafka.log.
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.authorizer.logger=WARN
"""

REDIS_CONF = """# Written by `journey stack up` on every start; edits are overwritten.
bind 127.0.0.1
port {port}
dir {dir}
daemonize no
protected-mode no
appendonly yes
save ""
logfile ""
# Small hashes (the customer directory's buckets, the partitions' aggregates) stay compact listpacks.
hash-max-listpack-entries 256
hash-max-listpack-value 1024
"""


class StackError(Exception):
    """A message for the user: what failed and what to do next (no traceback needed)."""


class StackOptions(BaseSettings):
    """The local stack's own settings (``JOURNEY_STACK_`` variables), apart from the product's."""

    model_config = SettingsConfigDict(env_prefix="JOURNEY_STACK_", extra="ignore")

    kafka_version: str = "3.9.1"
    kafka_heap: str = "512m"
    redis_cluster: bool = False  # also run the Redis Cluster (or `journey stack up --redis-cluster`)
    cluster_ports: str = Field(default="17000-17002", description="3 or more ports, e.g. 17000-17002")

    @classmethod
    def from_environment(cls, *, redis_cluster: bool = False) -> StackOptions:
        options = cls()
        if redis_cluster:
            options = options.model_copy(update={"redis_cluster": True})
        return options

    @property
    def cluster_url(self) -> str:
        first = self.cluster_ports.replace("-", ",").split(",")[0].strip()
        return f"redis+cluster://127.0.0.1:{first}"


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """What ``journey stack status`` shows for one service."""

    name: str
    running: bool
    pid: int | None
    address: str
    detail: str


@dataclass(frozen=True, slots=True)
class _Service:
    """Where one service of the stack lives: its port, state directory and files."""

    name: str
    host: str
    port: int
    dir: Path
    marker: str  # must appear in the process's command line
    env_var: str
    env_example: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.dir / f"{self.name}.log"

    @property
    def ports(self) -> tuple[int, ...]:
        # Kafka's controller listens on the next port.
        return (self.port, self.port + 1) if self.name == "kafka" else (self.port,)


# --- Paths -------------------------------------------------------------------------


def _home(settings: Settings) -> Path:
    return settings.home.expanduser().resolve()


def _state_dir(settings: Settings) -> Path:
    return _home(settings) / "stack"


def _kafka_dir(settings: Settings, options: StackOptions) -> Path:
    return _home(settings) / f"kafka-{options.kafka_version}"


def _cluster_dir(settings: Settings) -> Path:
    return _state_dir(settings) / "redis-cluster"


def _other_port(port: int) -> int:
    """A port to suggest when ours is taken."""
    return port + 10000 if port < 55000 else port - 10000


def _kafka(settings: Settings) -> _Service:
    host, port = settings.kafka_host_port
    return _Service(
        "kafka", host, port, _state_dir(settings) / "kafka", "kafka.Kafka",
        "JOURNEY_KAFKA_BOOTSTRAP", f"127.0.0.1:{_other_port(port)}",
    )  # fmt: skip


def _redis(settings: Settings) -> _Service:
    host, port = settings.redis_host_port
    return _Service(
        "redis", host, port, _state_dir(settings) / "redis", "redis-server",
        "JOURNEY_REDIS_URL", f"redis://127.0.0.1:{_other_port(port)}/0",
    )  # fmt: skip


# --- Processes ---------------------------------------------------------------------


def _cmdline(pid: int) -> str | None:
    """The command line of a live process, or None (zombies have an empty one)."""
    if Path("/proc/self").exists():
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return raw.replace(b"\0", b" ").decode(errors="replace").strip() or None
    # No /proc (macOS): ask ps.
    out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
    return out.stdout.strip() or None


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our own child, so it is not a zombie."""
    if pid in _STARTED:
        _STARTED[pid].poll()
        return
    with suppress(ChildProcessError):  # not our child: init reaps it
        os.waitpid(pid, os.WNOHANG)


def _is_ours(pid: int, service: _Service) -> bool:
    """Whether pid is a live process of this service that this stack started.

    A pid file can outlive its process (a reboot, a kill -9) and the pid be reused, so
    the pid alone is not trusted: the command line must name the service and the working
    directory (both Kafka and Redis run in the service's state dir) must match.
    """
    _reap(pid)
    cmdline = _cmdline(pid)
    if cmdline is None or service.marker not in cmdline:
        return False
    if not Path("/proc/self").exists():
        return True  # no /proc (macOS): the command line is all we can check
    return _cwd(pid) == service.dir


def _owned_pid(service: _Service) -> int | None:
    """The pid from the pid file if it is a live process of ours, else None."""
    try:
        pid = int(service.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_ours(pid, service) else None


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _redis_pong(host: str, port: int) -> bool:
    """Whether Redis answers PING (it answers -LOADING while it replays the AOF)."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _kafka_started(service: _Service) -> bool:
    # The line comes after the broker has loaded its logs: ~40 kB into the log on a fresh data
    # directory, megabytes into it when hundreds of partitions are recovered. Read it in chunks.
    line, chunk, logged = KAFKA_READY_LINE.encode(), 4 * 2**20, False
    try:
        with service.log_file.open("rb") as log:
            tail = b""
            while not logged and (block := log.read(chunk)):
                logged = line in tail + block
                tail = block[-len(line):]
    except OSError:
        return False
    return logged and _accepts(service.host, service.port)


def _ready(service: _Service) -> bool:
    if service.name == "kafka":
        return _kafka_started(service)
    return _redis_pong(service.host, service.port)


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


def _output_tail(text: str, lines: int = TAIL_LINES) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # colour codes some tools emit even in batch mode
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"


def _spawn(service: _Service, argv: list[str]) -> int:
    """Start argv detached (own session, output to the log file) and write the pid file."""
    if service.log_file.exists():
        # Keep the previous run's log for post-mortems, but readiness reads a fresh one.
        service.log_file.replace(service.log_file.with_name(service.log_file.name + ".1"))
    with service.log_file.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            cwd=service.dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C on `journey stack up` must not stop it
        )
    _STARTED[proc.pid] = proc
    service.pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


@contextmanager
def _locked(settings: Settings, echo: Echo) -> Iterator[None]:
    """Serialise `up`/`down` so two of them (e.g. parallel test workers) never race."""
    state = _state_dir(settings)
    state.mkdir(parents=True, exist_ok=True)
    with (state / "stack.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            echo("Waiting for another `journey stack` command to finish...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --- Kafka ---------------------------------------------------------------------------


def _require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(
            f"`{name}` is not on PATH; the local Kafka needs it. "
            f"Install it with `apt-get install -y {package}` (or your platform's equivalent)."
        )
    return path


def _libs_dir(settings: Settings, options: StackOptions) -> Path:
    return _kafka_dir(settings, options) / "libs"


def _libs_complete(settings: Settings, options: StackOptions) -> bool:
    """Whether a previous fetch finished: the marker lists every jar it produced."""
    marker = _kafka_dir(settings, options) / "libs.complete"
    try:
        jars = marker.read_text().split()
    except OSError:
        return False
    libs = _libs_dir(settings, options)
    return bool(jars) and all((libs / jar).is_file() for jar in jars)


def _fetch_kafka(settings: Settings, options: StackOptions, echo: Echo) -> None:
    """Download the broker jars (and their runtime dependencies) from Maven Central."""
    mvn = _require_tool("mvn", "maven")
    _require_tool("java", "openjdk-17-jre-headless")
    version, kafka_dir, libs = options.kafka_version, _kafka_dir(settings, options), _libs_dir(settings, options)
    echo(f"Kafka: fetching Kafka {version} jars from Maven Central into {libs} (first run only)...")
    kafka_dir.mkdir(parents=True, exist_ok=True)
    (kafka_dir / "libs.complete").unlink(missing_ok=True)
    shutil.rmtree(libs, ignore_errors=True)  # a half-finished fetch may hold stray jars
    (kafka_dir / "pom.xml").write_text(POM.format(version=version))
    argv = [
        mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(kafka_dir / "pom.xml"),
        "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={libs}",
    ]  # fmt: skip
    started = time.monotonic()
    try:
        done = subprocess.run(argv, cwd=kafka_dir, capture_output=True, text=True, timeout=FETCH_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        # TimeoutExpired carries bytes even when run() was asked for text.
        raw = exc.stdout or b""
        out = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        raise StackError(
            f"mvn did not finish fetching Kafka {version} within {FETCH_TIMEOUT:.0f} s "
            f"(is Maven Central reachable?). Last output:\n{_output_tail(out)}"
        ) from None
    jars = sorted(p.name for p in libs.glob("*.jar")) if libs.is_dir() else []
    if done.returncode != 0 or f"kafka_2.13-{version}.jar" not in jars:
        raise StackError(
            f"mvn could not fetch Kafka {version} (exit {done.returncode}); "
            f"check the version (JOURNEY_KAFKA_VERSION) and access to Maven Central. "
            f"Output:\n{_output_tail(done.stdout + done.stderr)}"
        )
    (kafka_dir / "libs.complete").write_text("\n".join(jars) + "\n")
    echo(f"Kafka: fetched {len(jars)} jars in {time.monotonic() - started:.1f} s.")


def _heap_flags(heap: str) -> list[str]:
    """-Xmx, plus -Xms256m unless the heap is smaller (the JVM refuses Xms > Xmx)."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", heap.strip())
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}
    small = match is not None and int(match[1]) * scale[match[2].lower()] < 256 * 2**20
    return [f"-Xmx{heap}"] + ([] if small or match is None else ["-Xms256m"])


def _write_kafka_config(service: _Service) -> None:
    service.dir.mkdir(parents=True, exist_ok=True)
    (service.dir / "server.properties").write_text(
        SERVER_PROPERTIES.format(port=service.port, controller=service.port + 1, data=service.dir / "data")
    )
    (service.dir / "log4j.properties").write_text(LOG4J_PROPERTIES)


def _java(settings: Settings, options: StackOptions, service: _Service, *extra: str) -> list[str]:
    """A java command line with the broker jars on the class path and our log4j config."""
    return [
        _require_tool("java", "openjdk-17-jre-headless"),
        f"-Dlog4j.configuration=file:{service.dir / 'log4j.properties'}",
        f"-Dkafka.logs.dir={service.dir}",
        "-cp", f"{_libs_dir(settings, options)}/*",  # java expands the wildcard itself
        *extra,
    ]  # fmt: skip


def _format_kafka(settings: Settings, options: StackOptions, service: _Service, echo: Echo) -> None:
    """Format the KRaft storage once; meta.properties marks a formatted data dir."""
    data = service.dir / "data"
    if (data / "meta.properties").exists():
        return
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    echo(f"Kafka: formatting storage in {data} (cluster id {cluster_id})...")
    argv = _java(settings, options, service, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                 "-c", str(service.dir / "server.properties"))  # fmt: skip
    done = subprocess.run(argv, cwd=service.dir, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise StackError(
            f"formatting Kafka storage in {data} failed (exit {done.returncode}). "
            f"Output:\n{_output_tail(done.stdout + done.stderr)}"
        )


def _start_kafka(settings: Settings, options: StackOptions, service: _Service, echo: Echo) -> int:
    if not _libs_complete(settings, options):
        _fetch_kafka(settings, options, echo)
    _write_kafka_config(service)
    _format_kafka(settings, options, service, echo)
    echo(f"Kafka: starting Kafka {options.kafka_version} on {service.address} (log {service.log_file})...")
    argv = _java(settings, options, service, "kafka.Kafka", str(service.dir / "server.properties"))
    argv[1:1] = [*_heap_flags(options.kafka_heap), "-Djava.awt.headless=true"]
    return _spawn(service, argv)


# --- Redis ---------------------------------------------------------------------------


def _redis_server(echo: Echo) -> str:
    """The redis-server binary, installed from Debian's archive when missing (as root)."""
    path = shutil.which("redis-server")
    if path is not None:
        return path
    command = "apt-get update && apt-get install -y redis-server"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise StackError(f"`redis-server` is not on PATH. Install it (as root: `{command}`) and retry.")
    echo("Redis: redis-server is missing; installing it with apt-get (about a minute)...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise StackError(
                f"`{' '.join(argv)}` failed (exit {done.returncode}); install redis-server yourself "
                f"(`{command}`) and retry. Output:\n{_output_tail(done.stdout + done.stderr)}"
            )
    path = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")
    if path is None:
        raise StackError(
            "apt-get installed redis-server but it is not on PATH; add /usr/bin to PATH and retry."
        )
    return path


def _start_redis(service: _Service, echo: Echo) -> int:
    binary = _redis_server(echo)
    service.dir.mkdir(parents=True, exist_ok=True)
    conf = service.dir / "redis.conf"
    conf.write_text(REDIS_CONF.format(port=service.port, dir=service.dir))
    echo(f"Redis: starting on {service.address} (append-only, data in {service.dir})...")
    return _spawn(service, [binary, str(conf)])


# --- Public interface ----------------------------------------------------------------


def _check_local(service: _Service) -> None:
    if service.host not in LOCAL_HOSTS:
        raise StackError(
            f"{service.env_var} points {service.name} at {service.address}, but `journey stack` only "
            f"runs services on this machine: unset {service.env_var} or use 127.0.0.1."
        )


def _check_ports_free(service: _Service) -> None:
    """Refuse to start over a port someone else already listens on."""
    for port in service.ports:
        if _accepts(service.host, port):
            extra = " (Kafka also uses the next port for its controller)" if service.name == "kafka" else ""
            raise StackError(
                f"port {port} on {service.host} is already in use by a process `journey stack` did not "
                f"start, so {service.name} cannot listen there{extra}. Stop that process, or move the "
                f"stack to another port, e.g. `export {service.env_var}={service.env_example}`."
            )


def _wait_ready(service: _Service, pid: int, timeout: float) -> float:
    """Wait until the service answers; return the seconds waited."""
    started = time.monotonic()
    while not _ready(service):
        # A process we just started is asked directly: while Redis rewrites its process title,
        # its command line reads empty for an instant, which must not count as an exit.
        exited = _STARTED[pid].poll() is not None if pid in _STARTED else not _is_ours(pid, service)
        if exited:
            service.pid_file.unlink(missing_ok=True)
            raise StackError(
                f"{service.name} (pid {pid}) exited while starting. Last lines of {service.log_file}:\n"
                f"{_tail(service.log_file)}"
            )
        if time.monotonic() - started > timeout:
            raise StackError(
                f"{service.name} (pid {pid}) did not become ready on {service.address} within "
                f"{timeout:.0f} s; it is left running (`journey stack down` stops it). "
                f"Last lines of {service.log_file}:\n{_tail(service.log_file)}"
            )
        time.sleep(0.2)
    return time.monotonic() - started


def _service_status(settings: Settings, options: StackOptions, service: _Service) -> ServiceStatus:
    if service.host not in LOCAL_HOSTS:
        detail = f"not managed by `journey stack` ({service.env_var} points elsewhere)"
        return ServiceStatus(service.name, False, None, service.address, detail)
    pid = _owned_pid(service)
    if pid is None:
        taken = _accepts(service.host, service.port)
        why = "port in use by a process `journey stack` did not start" if taken else "not running"
        return ServiceStatus(service.name, False, None, service.address, f"{why}; log {service.log_file}")
    if not _ready(service):
        detail = f"starting or unresponsive (pid {pid}); log {service.log_file}"
        return ServiceStatus(service.name, False, pid, service.address, detail)
    if service.name == "kafka":
        found = re.search(r"kafka-([^/\s]+)/libs", _cmdline(pid) or "")
        version = found[1] if found else options.kafka_version
        what = f"Kafka {version} (KRaft, data in {service.dir / 'data'})"
    else:
        what = f"Redis (append-only, data in {service.dir})"
    return ServiceStatus(service.name, True, pid, service.address, f"{what}; log {service.log_file}")


def _cluster_status(settings: Settings, options: StackOptions) -> ServiceStatus | None:
    base = _cluster_dir(settings)
    if not options.redis_cluster and not (base / "cluster.json").exists():
        return None
    st = redis_cluster.status(base)
    pids = [n.pid for n in st.nodes if n.pid]
    address = ",".join(f"127.0.0.1:{p}" for p in st.ports) or options.cluster_url
    detail = (f"Redis Cluster, {len(st.nodes)} masters ({options.cluster_url}), data in {base}" if st.ok
              else f"not running; data in {base}")
    return ServiceStatus("redis-cluster", st.ok, pids[0] if pids else None, address, detail)


def status(settings: Settings, options: StackOptions | None = None) -> list[ServiceStatus]:
    """Report Kafka and Redis (and the cluster): running or not, pid, address, and where the log is."""
    options = options or StackOptions()
    out = [_service_status(settings, options, _kafka(settings)), _service_status(settings, options, _redis(settings))]
    cluster = _cluster_status(settings, options)
    return [*out, cluster] if cluster else out


def up(settings: Settings, options: StackOptions | None = None, echo: Echo = print) -> list[ServiceStatus]:
    """Start whatever of Kafka and Redis (and the cluster) is not running yet, and wait until all answer."""
    options = options or StackOptions()
    services = [_kafka(settings), _redis(settings)]
    for service in services:
        _check_local(service)
    with _locked(settings, echo):
        pids = {s.name: _owned_pid(s) for s in services}
        for service in services:
            if pids[service.name] is None:
                service.pid_file.unlink(missing_ok=True)  # stale: its process is gone
                _check_ports_free(service)
            else:
                echo(f"{service.name.capitalize()}: already running (pid {pids[service.name]}).")
        kafka, redis = services
        # Redis first: it starts in well under a second, so it is ready while Kafka's jars
        # are fetched and the JVM boots; the waits below then overlap.
        if pids["redis"] is None:
            pids["redis"] = _start_redis(redis, echo)
        if pids["kafka"] is None:
            pids["kafka"] = _start_kafka(settings, options, kafka, echo)
        for service, timeout in ((redis, REDIS_TIMEOUT), (kafka, KAFKA_TIMEOUT)):
            pid = pids[service.name]
            assert pid is not None
            waited = _wait_ready(service, pid, timeout)
            echo(f"{service.name.capitalize()}: ready on {service.address} (pid {pid}, {waited:.1f} s).")
        if options.redis_cluster:
            try:
                redis_cluster.up(_cluster_dir(settings), options.cluster_ports,
                                 echo=lambda line: echo(f"Redis Cluster: {line}"))
            except redis_cluster.ClusterStackError as exc:
                raise StackError(f"Redis Cluster: {exc}") from None
            echo(f"Redis Cluster: ready ({options.cluster_url}).")
    return status(settings, options)


def _signal(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):  # it exited on its own meanwhile
        os.kill(pid, sig)


def _wait_gone(pid: int, service: _Service, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_ours(pid, service):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _stop(service: _Service, echo: Echo) -> None:
    pid = _owned_pid(service)
    if pid is None:
        service.pid_file.unlink(missing_ok=True)
        echo(f"{service.name.capitalize()}: not running.")
        return
    echo(f"{service.name.capitalize()}: stopping pid {pid}...")
    _signal(pid, signal.SIGTERM)  # Kafka shuts down cleanly; Redis flushes its AOF
    if not _wait_gone(pid, service, STOP_TIMEOUT):
        echo(f"{service.name.capitalize()}: still running after {STOP_TIMEOUT:.0f} s; killing it.")
        _signal(pid, signal.SIGKILL)
        if not _wait_gone(pid, service, 10.0):
            raise StackError(f"{service.name} (pid {pid}) survived SIGKILL; check it with `ps -p {pid}`.")
    service.pid_file.unlink(missing_ok=True)
    echo(f"{service.name.capitalize()}: stopped (data kept in {service.dir}).")


def down(settings: Settings, options: StackOptions | None = None, echo: Echo = print) -> list[ServiceStatus]:
    """Stop the Kafka, Redis and Redis Cluster that `up` started (only those), keeping their data."""
    options = options or StackOptions()
    with _locked(settings, echo):
        # Kafka first: it is the one clients are still connected to.
        for service in (_kafka(settings), _redis(settings)):
            _stop(service, echo)
        if _cluster_dir(settings).exists():
            stopped = redis_cluster.down(_cluster_dir(settings), echo=lambda line: echo(f"Redis Cluster: {line}"))
            if stopped:
                echo(f"Redis Cluster: stopped {len(stopped)} nodes (data kept in {_cluster_dir(settings)}).")
    return status(settings, options)
