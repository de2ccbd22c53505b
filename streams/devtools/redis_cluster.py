"""A local 3-master Redis Cluster on 127.0.0.1, for development and tests (``journey stack up --redis-cluster``).

    up(base_dir, ports)   start (or adopt) one redis-server per port, create the cluster once,
                          wait until every node says cluster_state:ok with 16384 slots assigned
    down(base_dir)        stop the servers this module started (by pid file), keep the data
    status(base_dir)      what runs, per node

Uses Debian's ``redis-server`` (tested with 7.0.15) in cluster mode and
``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes``.

Layout under base_dir::

    base_dir/cluster.json          ports of the last `up` (so down/status need no ports)
    base_dir/cluster.lock          flock: up/down never race
    base_dir/node-<port>/redis.conf  (rewritten on every start)
    base_dir/node-<port>/redis.pid   pid of the redis-server we spawned
    base_dir/node-<port>/redis.log   Redis' own log (logfile)
    base_dir/node-<port>/stdout.log  anything printed before the log file is opened
    base_dir/node-<port>/nodes.conf  cluster state, owned by Redis (cluster-config-file)
    base_dir/node-<port>/appendonlydir/  AOF (Redis 7 multi-part AOF)

Idempotence: `up` twice does nothing the second time (processes adopted through their pid
file, cluster already formed). After a crash / kill -9 / reboot, `up` restarts the servers
on their old nodes.conf + AOF and the cluster comes back with its data, no re-create.
A leftover nodes.conf that does not match the requested ports (an interrupted create, a
node dir wiped by hand, ...) is reset (FLUSHALL + CLUSTER RESET HARD) and the cluster
re-created -- automatically when the nodes hold no keys, only with reset=True otherwise.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
TOTAL_SLOTS = 16384
NODE_TIMEOUT_MS = 5000

REDIS_CONF = """\
# Written by `journey stack up --redis-cluster` on every start; edits are overwritten.
port {port}
bind 127.0.0.1
protected-mode no
daemonize no
dir "{dir}"
logfile "{dir}/redis.log"
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout {node_timeout}
appendonly yes
appendfsync everysec
save ""
# Same settings as the stack's single Redis (streams/devtools/stack.py).
hash-max-listpack-entries 256
hash-max-listpack-value 1024
"""
# Notes on the options
# - cluster-config-file is relative to `dir` (Redis chdirs there); it is Redis' own file,
#   rewritten by Redis, locked with flock() by the running node (Redis >= 7.0 refuses to
#   start a second node on the same file).
# - The cluster bus listens on port + 10000 (cluster-port 0 = default): 17000 -> 27000.
# - daemonize no: we spawn the process ourselves and know its pid; redis-server writes no
#   pid file of its own when not daemonized and `pidfile` is unset.

_STARTED: dict[int, subprocess.Popen[bytes]] = {}


class ClusterStackError(Exception):
    """A message for the user: what failed and what to do next."""


# --- small helpers -----------------------------------------------------------------


def _node_dir(base: Path, port: int) -> Path:
    return base / f"node-{port}"


def _pid_file(base: Path, port: int) -> Path:
    return _node_dir(base, port) / "redis.pid"


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or None


def _reap(pid: int) -> None:
    if pid in _STARTED:
        _STARTED[pid].poll()
        return
    with suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _is_ours(pid: int, base: Path, port: int) -> bool:
    """A live redis-server for this port whose working directory is the node dir.

    The pid file can outlive the process and the pid be reused, so the pid alone is not
    trusted. redis-server rewrites its title to "redis-server 127.0.0.1:17000 [cluster]".
    """
    if pid in _STARTED:  # our own child: between fork and exec its cmdline is still Python's
        return _STARTED[pid].poll() is None
    _reap(pid)
    cmd = _cmdline(pid)
    # Right after exec (before Redis sets its title) the command line is "redis-server <conf>".
    conf = str(_node_dir(base, port) / "redis.conf")
    if cmd is None or "redis-server" not in cmd or (f":{port}" not in cmd and conf not in cmd):
        return False
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) == _node_dir(base, port).resolve()
    except OSError:
        return False


def _owned_pid(base: Path, port: int) -> int | None:
    try:
        pid = int(_pid_file(base, port).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_ours(pid, base, port) else None


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _resp(*args: str | int) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _command(port: int, *args: str | int, timeout: float = 5.0) -> str:
    """Send one command, return the reply as text (simple/bulk string or integer).

    A tiny RESP2 client, so the stack needs no redis-py; raises _ReplyError on -ERR.
    """
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(_resp(*args))
        f = sock.makefile("rb")
        line = f.readline()
        if not line:
            raise ConnectionError(f"{HOST}:{port} closed the connection")
        kind, rest = line[:1], line[1:-2].decode(errors="replace")
        if kind == b"-":
            raise _ReplyError(rest)
        if kind in (b"+", b":"):
            return rest
        if kind == b"$":
            n = int(rest)
            return "" if n < 0 else f.read(n + 2)[:-2].decode(errors="replace")
        raise ConnectionError(f"unexpected reply {line!r}")


class _ReplyError(Exception):
    pass


def _info_dict(text: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError:
        return "(no log)"


@contextmanager
def _locked(base: Path) -> Iterator[None]:
    base.mkdir(parents=True, exist_ok=True)
    with (base / "cluster.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin")
    if path is None:
        raise ClusterStackError(f"`{name}` not found; as root: apt-get install -y redis-server redis-tools")
    return path


def _parse_ports(ports: Sequence[int] | str) -> list[int]:
    if isinstance(ports, str):
        if "-" in ports:
            lo, hi = (int(p) for p in ports.split("-"))
            out = list(range(lo, hi + 1))
        else:
            out = [int(p) for p in ports.split(",")]
    else:
        out = [int(p) for p in ports]
    if len(out) < 3 or len(set(out)) != len(out):
        raise ClusterStackError(f"need at least 3 distinct ports for 3 masters, got {out}")
    for p in out:
        if not 1 <= p <= 55535:
            raise ClusterStackError(f"port {p}: the cluster bus needs port+10000 <= 65535")
    return out


# --- node state ---------------------------------------------------------------------


@dataclass
class _View:
    """What one node says about the cluster."""

    port: int
    myself: str  # node id
    peers: dict[str, str]  # "127.0.0.1:port" -> node id (from CLUSTER NODES, self included)
    info: dict[str, str]
    keys: int


def _view(port: int) -> _View:
    info = _info_dict(_command(port, "CLUSTER", "INFO"))
    myself, peers = "", {}
    for line in _command(port, "CLUSTER", "NODES").splitlines():
        parts = line.split()
        node_id, addr, flags = parts[0], parts[1].split("@")[0], parts[2]
        if "myself" in flags:
            myself = node_id
        peers[addr] = node_id
    keys = int(_command(port, "DBSIZE"))
    return _View(port, myself, peers, info, keys)


def _classify(views: list[_View]) -> str:
    """'fresh' (no node knows another), 'formed' (exactly our nodes, ids agree), 'mismatch'."""
    if all(int(v.info["cluster_known_nodes"]) == 1 and int(v.info["cluster_slots_assigned"]) == 0 for v in views):
        return "fresh"
    ids = {f"{HOST}:{v.port}": v.myself for v in views}
    if all(v.peers == ids for v in views):
        return "formed"
    return "mismatch"


def _cluster_ok(views: list[_View]) -> bool:
    n = str(len(views))
    return all(
        v.info.get("cluster_state") == "ok"
        and v.info.get("cluster_slots_assigned") == str(TOTAL_SLOTS)
        and v.info.get("cluster_slots_ok") == str(TOTAL_SLOTS)
        and v.info.get("cluster_known_nodes") == n
        and v.info.get("cluster_size") == n  # masters serving slots
        for v in views
    )


# --- processes ----------------------------------------------------------------------


def _start_node(base: Path, port: int, redis_server: str) -> int:
    d = _node_dir(base, port)  # base is already resolved (absolute)
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "redis.conf"
    conf.write_text(REDIS_CONF.format(port=port, dir=d, node_timeout=NODE_TIMEOUT_MS))
    with (d / "stdout.log").open("ab") as out:
        proc = subprocess.Popen(
            [redis_server, str(conf)],
            cwd=d,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C of the caller must not stop the cluster
        )
    _STARTED[proc.pid] = proc
    _pid_file(base, port).write_text(f"{proc.pid}\n")
    return proc.pid


def _wait_pong(base: Path, port: int, pid: int, timeout: float) -> None:
    """PING answers PONG (it answers -LOADING while the AOF is replayed)."""
    deadline = time.monotonic() + timeout
    while True:
        with suppress(OSError, _ReplyError):
            if _command(port, "PING", timeout=1.0) == "PONG":
                return
        if not _is_ours(pid, base, port):
            _pid_file(base, port).unlink(missing_ok=True)
            d = _node_dir(base, port)
            raise ClusterStackError(
                f"redis-server on port {port} (pid {pid}) exited while starting.\n"
                f"{d / 'redis.log'}:\n{_tail(d / 'redis.log')}\n{d / 'stdout.log'}:\n{_tail(d / 'stdout.log')}"
            )
        if time.monotonic() > deadline:
            raise ClusterStackError(f"redis-server on port {port} (pid {pid}) did not answer PING in {timeout:.0f} s")
        time.sleep(0.05)


def _wait_cluster_ok(ports: list[int], timeout: float) -> list[_View]:
    deadline = time.monotonic() + timeout
    while True:
        views = None
        with suppress(OSError, _ReplyError):
            views = [_view(p) for p in ports]
            if _cluster_ok(views):
                return views
        if time.monotonic() > deadline:
            detail = "\n".join(f"  {v.port}: {v.info}" for v in views or [])
            raise ClusterStackError(f"cluster not ok after {timeout:.0f} s:\n{detail}")
        time.sleep(0.1)


def _reset_nodes(ports: list[int]) -> None:
    for p in ports:
        _command(p, "FLUSHALL")
        _command(p, "CLUSTER", "RESET", "HARD")  # forget peers, drop slots, new node id, epoch 0


def _create(base: Path, ports: list[int], timeout: float) -> str:
    argv = [_tool("redis-cli"), "--cluster", "create", *(f"{HOST}:{p}" for p in ports),
            "--cluster-replicas", "0", "--cluster-yes"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    out = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)  # redis-cli colours even when piped
    (base / "create.log").write_text(f"$ {' '.join(argv)}\n{out}")
    if done.returncode != 0 or "[OK] All 16384 slots covered" not in out:
        raise ClusterStackError(f"`{' '.join(argv)}` failed (exit {done.returncode}):\n{out[-3000:]}")
    return out


# --- public interface ---------------------------------------------------------------


@dataclass
class NodeStatus:
    port: int
    pid: int | None  # ours and alive, else None
    running: bool  # answers PING
    cluster_state: str | None = None
    slots_assigned: int | None = None
    known_nodes: int | None = None
    role: str | None = None
    node_id: str | None = None
    keys: int | None = None
    error: str | None = None


@dataclass
class ClusterStatus:
    base_dir: str
    ports: list[int]
    ok: bool
    nodes: list[NodeStatus] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis+cluster://{HOST}:{self.ports[0]}" if self.ports else ""


def up(base_dir: str | os.PathLike[str], ports: Sequence[int] | str = (17000, 17001, 17002), *,
       reset: bool = False, timeout: float = 60.0, echo=print) -> ClusterStatus:  # fmt: skip
    """Start (or adopt) one redis-server per port and make sure they form one healthy cluster."""
    base = Path(base_dir).resolve()
    port_list = _parse_ports(ports)
    redis_server = _tool("redis-server")
    with _locked(base):
        state_file = base / "cluster.json"
        with suppress(OSError, ValueError):
            old = json.loads(state_file.read_text())["ports"]
            if old != port_list:
                stale = [p for p in old if p not in port_list and _owned_pid(base, p)]
                if stale:
                    raise ClusterStackError(
                        f"{base} runs a cluster on ports {old}; `down` it before moving to {port_list}"
                    )
        state_file.write_text(json.dumps({"ports": port_list}) + "\n")

        # 1. processes
        for port in port_list:
            pid = _owned_pid(base, port)
            if pid is not None:
                echo(f"node {port}: already running (pid {pid})")
            else:
                for p in (port, port + 10000):
                    if _accepts(p):
                        raise ClusterStackError(
                            f"port {p} is in use by a process this stack did not start "
                            f"(node {port} needs {port} and its bus port {port + 10000})"
                        )
                had_state = (_node_dir(base, port) / "nodes.conf").exists()
                pid = _start_node(base, port, redis_server)
                echo(f"node {port}: started pid {pid}" + (" (on its leftover nodes.conf + AOF)" if had_state else ""))
            _wait_pong(base, port, pid, timeout)

        # 2. cluster membership
        views = [_view(p) for p in port_list]
        kind = _classify(views)
        if kind == "mismatch":
            keys = sum(v.keys for v in views)
            if keys and not reset:
                raise ClusterStackError(
                    f"the nodes' nodes.conf do not describe one cluster of {port_list} and they hold {keys} keys; "
                    "call up(..., reset=True) to FLUSHALL + CLUSTER RESET HARD them, or down(..., wipe=True)"
                )
            echo(f"nodes.conf left over from another layout ({keys} keys): resetting the nodes")
            _reset_nodes(port_list)
            kind = "fresh"
        if kind == "fresh":
            echo(f"creating the cluster: redis-cli --cluster create ({len(port_list)} masters, no replicas)")
            _create(base, port_list, timeout)
        else:
            echo("cluster already formed; waiting for cluster_state:ok")

        # 3. healthy on every node
        _wait_cluster_ok(port_list, timeout)
        return status(base)


def down(base_dir: str | os.PathLike[str], *, wipe: bool = False, timeout: float = 30.0, echo=print) -> list[int]:
    """Stop the redis-servers this stack started under base_dir (pid files); return their pids.

    SIGTERM = clean shutdown (AOF flushed, nodes.conf saved); SIGKILL after `timeout`.
    wipe=True also deletes the node dirs (data + nodes.conf).
    """
    base = Path(base_dir).resolve()
    if not base.exists():
        return []
    stopped: list[int] = []
    with _locked(base):
        for d in sorted(base.glob("node-*")):
            port = int(d.name.split("-", 1)[1])
            pid = _owned_pid(base, port)
            if pid is None:
                if _pid_file(base, port).exists():
                    echo(f"node {port}: pid file is stale, removing it")
                _pid_file(base, port).unlink(missing_ok=True)
                continue
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
            echo(f"node {port}: SIGTERM pid {pid}")
        deadline = time.monotonic() + timeout
        for d in sorted(base.glob("node-*")):
            port = int(d.name.split("-", 1)[1])
            pid_file = _pid_file(base, port)
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                continue
            while _is_ours(pid, base, port):
                if time.monotonic() > deadline:
                    echo(f"node {port}: still alive after {timeout:.0f} s, SIGKILL")
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    time.sleep(0.1)
                    _reap(pid)
                    break
                time.sleep(0.05)
            _STARTED.pop(pid, None)
            pid_file.unlink(missing_ok=True)
        if wipe:
            for d in base.glob("node-*"):
                shutil.rmtree(d)
            (base / "cluster.json").unlink(missing_ok=True)
    return stopped


def status(base_dir: str | os.PathLike[str]) -> ClusterStatus:
    base = Path(base_dir).resolve()
    try:
        ports = json.loads((base / "cluster.json").read_text())["ports"]
    except (OSError, ValueError, KeyError):
        ports = sorted(int(d.name.split("-", 1)[1]) for d in base.glob("node-*"))
    nodes = []
    for port in ports:
        pid = _owned_pid(base, port)
        ns = NodeStatus(port=port, pid=pid, running=False)
        try:
            v = _view(port)
            ns.running = True
            ns.cluster_state = v.info.get("cluster_state")
            ns.slots_assigned = int(v.info.get("cluster_slots_assigned", 0))
            ns.known_nodes = int(v.info.get("cluster_known_nodes", 0))
            ns.node_id = v.myself
            ns.keys = v.keys
            ns.role = _info_dict(_command(port, "INFO", "replication")).get("role")
        except (OSError, _ReplyError) as e:
            ns.error = f"{type(e).__name__}: {e}"
        nodes.append(ns)
    ok = bool(nodes) and all(
        n.pid is not None and n.cluster_state == "ok" and n.slots_assigned == TOTAL_SLOTS
        and n.known_nodes == len(nodes)
        for n in nodes
    )
    return ClusterStatus(str(base), ports, ok, nodes)
