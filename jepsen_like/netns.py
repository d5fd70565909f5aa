"""A network namespace of the run's own: node addresses on its loopback, partitions by nftables.

Theory of operation. A run creates one network namespace (`ip netns add jl-<pid>-<hex>`) and
brings its `lo` up. A fresh namespace's `lo` answers for all of 127.0.0.0/8 (the kernel's
`local 127.0.0.0/8` route comes with `lo`), so node k binds 127.0.0.(10+k) with no address
to add: 127.0.0.11, 127.0.0.12, ... Nothing here touches the host's own network: every `ip`
and `nft` command names this namespace, and removing it removes its rules with it.

Why addresses alone cannot tell nodes apart: a socket that connects without binding first
takes the route's source address, and on `lo` that is 127.0.0.1 for every destination
(checked: a connection to 127.0.0.12 arrives from 127.0.0.1 even when 127.0.0.12 is added to
`lo`). pysyncobj connects without binding, so a packet's source address does not say which
node sent it. What does: each node runs with a group id of its own (node k: 4200 + 10 + k,
so n1 is 4211), and nftables reads a socket's group (`meta skgid`) on the way out.

The nftables table `inet jepsen_like` in the namespace:
- chain `output` (hook output): the first packet of every connection a node opens marks the
  connection with the node's group id (`ct mark`). A connection therefore knows both its
  ends for its whole life: the node that opened it (`ct mark`) and the node it reached
  (`ct original ip daddr`: nodes listen only on their own address).
- chain `input` (hook input) jumps to chain `cuts`, which holds one pair of rules per
  directed link (`dst` drops traffic from `src`, Jepsen's grudge): packets of connections
  `src` opened towards `dst`, in their original direction, and packets of connections `dst`
  opened towards `src`, in their reply direction. Dropping on input, as Jepsen does with
  `iptables -A INPUT -s src -j DROP`, leaves the sender to time out rather than fail fast.
- `heal()` flushes `cuts`; every change rewrites `cuts` in one `nft -f` transaction.
Processes that are not nodes (the test's clients, group 0) open unmarked connections and
are never cut: clients reach every node, as Jepsen's control node does.

Where things run. Nodes run under `ip netns exec NAME` (the launcher's `--netns`), with
their group ids (`--gids`). Clients must run inside the namespace too, to reach
127.0.0.11...: the runner calls `entered()` in its main thread before it starts client
threads, which switches that thread (with setns(2)) into the namespace; threads and
processes started from it afterwards are inside as well, and sockets opened inside stay
inside. `nft` and other commands go through `run()`/`popen()` (`ip netns exec`).

Cleanup. `close()` leaves the namespace if this thread entered it, kills every process
still inside it by pid (found as `ip netns pids` finds them: /proc/PID/ns/net), and deletes
it; it is idempotent. The caller registers it for exit and signals (`close_at_exit`), and
`remove_stale()` removes the namespaces of earlier runs whose creating process is gone
(the pid is in the name, so this holds within one pid namespace).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

NAME_PREFIX = "jl-"
NETNS_DIR = Path("/run/netns")
ADDRESS_PREFIX = "127.0.0."
ADDRESS_OCTET_FIRST = 11  # node 1 is 127.0.0.11
GID_BASE = 4200  # a node's group id: GID_BASE + the last octet of its address
MEMBERS_MAX = 9
TABLE = "jepsen_like"
COMMAND_TIMEOUT_S = 10.0
CLOSE_WAIT_S = 5.0
POLL_S = 0.05
CLONE_NEWNET = 0x40000000
DISABLE_VARIABLE = "JEPSEN_LIKE_NETNS"  # "off": behave as if namespaces were unavailable
UNAVAILABLE = "partition needs root and nftables: "

Grudge = Mapping[str, Collection[str]]  # node -> the nodes it drops traffic from


class NamespaceError(Exception):
    """A namespace or nftables command failed; the message is one line."""


@dataclass(frozen=True, slots=True)
class Member:
    """A node as the namespace knows it: its name, its address, its group id."""

    name: str
    address: str
    gid: int


def members(node_count: int) -> tuple[Member, ...]:
    """n1 -> 127.0.0.11 and group 4211, n2 -> 127.0.0.12 and group 4212, ..."""
    if not 1 <= node_count <= MEMBERS_MAX:
        raise ValueError(f"a namespace holds 1..{MEMBERS_MAX} nodes, not {node_count}")
    found = []
    for number in range(1, node_count + 1):
        octet = ADDRESS_OCTET_FIRST + number - 1
        found.append(Member(f"n{number}", f"{ADDRESS_PREFIX}{octet}", GID_BASE + octet))
    return tuple(found)


class Namespace:
    """One network namespace with `node_count` node addresses and a partition table."""

    def __init__(self, node_count: int, *, name: str | None = None) -> None:
        self.members = members(node_count)
        self.name = name or f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        if not 1 <= len(self.name) <= 64 or not all(c.isalnum() or c in "_.-" for c in self.name):
            raise ValueError(f"namespace name {self.name!r}: letters, digits, '_', '.', '-'")
        self._grudge: dict[str, frozenset[str]] = {}
        self._created = False
        self._closed = False
        self._home_fd: int | None = None  # set while a thread of ours is inside
        self._entered_by: int | None = None
        self._lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Namespace:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Create the namespace, bring `lo` up, load the nftables table; undone on failure."""
        if self._created:
            raise NamespaceError(f"namespace {self.name} is already open")
        _command(["ip", "netns", "add", self.name])
        self._created = True
        try:
            _command(["ip", "-n", self.name, "link", "set", "lo", "up"])
            route = _command(["ip", "-n", self.name, "route", "get", self.members[-1].address])
            if not route.startswith("local "):
                raise NamespaceError(
                    f"{self.members[-1].address} is not local in {self.name}: {route.strip()}"
                )
            self.run(["nft", "-f", "-"], input_text=self._table())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Leave, kill what is left inside by pid, delete the namespace. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._leave()
        if not self._created or not self.exists():
            return
        _kill_all(self.pids, CLOSE_WAIT_S)
        with contextlib.suppress(NamespaceError):
            _command(["ip", "netns", "delete", self.name])

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    def exists(self) -> bool:
        return self.path.exists()

    # -- processes ----------------------------------------------------------------------------

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` as a command that runs inside the namespace."""
        return [_tool("ip"), "netns", "exec", self.name, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        member: str | None = None,
        input_text: str | None = None,
        timeout_s: float = COMMAND_TIMEOUT_S,
    ) -> str:
        """Run `argv` inside (as `member`'s group when given); its stdout, or NamespaceError."""
        gid = None if member is None else self.member(member).gid
        return _command(self.command(argv), input_text=input_text, timeout_s=timeout_s, gid=gid)

    def popen(
        self,
        argv: Sequence[str],
        *,
        member: str | None = None,
        stdout: int | None = subprocess.DEVNULL,
        stderr: int | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` inside (as `member`'s group when given); the caller stops it by pid."""
        gid = None if member is None else self.member(member).gid
        return subprocess.Popen(  # noqa: S603 - argv comes from our own code
            self.command(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            group=gid,
            extra_groups=None if gid is None else [],
            start_new_session=True,
        )

    def pids(self) -> list[int]:
        """Processes inside the namespace (their /proc/PID/ns/net is it), this one left out."""
        try:
            target = self.path.stat()
        except OSError:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                inside = (entry / "ns" / "net").stat()
            except OSError:  # gone, a zombie, or a kernel thread
                continue
            if (inside.st_ino, inside.st_dev) == (target.st_ino, target.st_dev):
                found.append(int(entry.name))
        return sorted(found)

    @contextlib.contextmanager
    def entered(self) -> Iterator[Namespace]:
        """Switch the calling thread into the namespace, and back at the end (setns(2))."""
        with self._lock:
            if self._home_fd is not None:
                raise NamespaceError(f"a thread already entered {self.name}")
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            try:
                _setns(self.path)
            except BaseException:
                os.close(home)
                raise
            self._home_fd = home
            self._entered_by = threading.get_ident()
        try:
            yield self
        finally:
            self._leave()

    def is_current(self) -> bool:
        """Whether the calling thread is inside this namespace."""
        try:
            return os.stat("/proc/thread-self/ns/net").st_ino == self.path.stat().st_ino
        except OSError:
            return False

    def _leave(self) -> None:
        with self._lock:
            home, self._home_fd = self._home_fd, None
            entered_by, self._entered_by = self._entered_by, None
        if home is None:
            return
        try:
            if entered_by == threading.get_ident():
                _setns_fd(home)
        finally:
            os.close(home)

    # -- partitions ---------------------------------------------------------------------------

    def member(self, node: str) -> Member:
        """A member by name (n1) or by address (127.0.0.11)."""
        for candidate in self.members:
            if node in (candidate.name, candidate.address):
                return candidate
        raise KeyError(f"{node!r} is not a node of namespace {self.name}")

    @property
    def grudge(self) -> dict[str, frozenset[str]]:
        """The links cut now: node -> the nodes it drops traffic from."""
        return {node: sources for node, sources in self._grudge.items() if sources}

    def apply_grudge(self, grudge: Grudge) -> None:
        """Make `grudge` the whole set of cut links (one atomic nftables change)."""
        resolved: dict[str, frozenset[str]] = {}
        for node, sources in grudge.items():
            name = self.member(node).name
            dropped = frozenset(self.member(source).name for source in sources) - {name}
            resolved[name] = resolved.get(name, frozenset()) | dropped
        script = [f"flush chain inet {TABLE} cuts"]
        for node, sources in sorted(resolved.items()):
            receiver = self.member(node)
            for source in sorted(sources):
                sender = self.member(source)
                script.append(
                    f"add rule inet {TABLE} cuts ct direction original ct mark {sender.gid} "
                    f"ct original ip daddr {receiver.address} drop"
                )
                script.append(
                    f"add rule inet {TABLE} cuts ct direction reply ct mark {receiver.gid} "
                    f"ct original ip daddr {sender.address} drop"
                )
        self.run(["nft", "-f", "-"], input_text="\n".join(script) + "\n")
        self._grudge = resolved

    def cut(self, a: str, b: str) -> None:
        """Drop every packet between nodes a and b, both ways (other cuts stay)."""
        grudge = dict(self._grudge)
        name_a, name_b = self.member(a).name, self.member(b).name
        grudge[name_a] = grudge.get(name_a, frozenset()) | {name_b}
        grudge[name_b] = grudge.get(name_b, frozenset()) | {name_a}
        self.apply_grudge(grudge)

    def heal(self) -> None:
        """Remove every cut."""
        self.apply_grudge({})

    def isolate(self, node: str) -> None:
        """Cut `node` from every other node (and only that)."""
        name = self.member(node).name
        self.partition([[name], [m.name for m in self.members if m.name != name]])

    def partition(self, groups: Sequence[Collection[str]]) -> None:
        """Nodes talk only within their group; a node in no group keeps all its links."""
        self.apply_grudge(complete_grudge(groups))

    def _table(self) -> str:
        marks = "\n".join(
            f"        ct state new meta skgid {m.gid} ct mark set {m.gid}" for m in self.members
        )
        return (
            f"table inet {TABLE} {{\n"
            f"    chain output {{\n"
            f"        type filter hook output priority filter; policy accept;\n"
            f"{marks}\n"
            f"    }}\n"
            f"    chain cuts {{\n"
            f"    }}\n"
            f"    chain input {{\n"
            f"        type filter hook input priority filter; policy accept;\n"
            f"        ct mark != 0 jump cuts\n"
            f"    }}\n"
            f"}}\n"
        )


def complete_grudge(groups: Sequence[Collection[str]]) -> dict[str, frozenset[str]]:
    """Every node drops traffic from the nodes of every other group (Jepsen's)."""
    everyone = frozenset(node for group in groups for node in group)
    return {node: everyone - frozenset(group) for group in groups for node in group}


# -- availability ---------------------------------------------------------------------------

_available: tuple[bool, str] | None = None


def available(*, refresh: bool = False) -> tuple[bool, str]:
    """(True, "") when this process can make namespaces and nftables rules; else (False,
    one line saying why). It creates and deletes a probe namespace, once per process."""
    global _available  # noqa: PLW0603 - one probe per process
    if _available is None or refresh:
        _available = _probe()
    return _available


def _probe() -> tuple[bool, str]:
    if os.environ.get(DISABLE_VARIABLE, "").lower() == "off":
        return False, f"{UNAVAILABLE}turned off by {DISABLE_VARIABLE}=off"
    if os.geteuid() != 0:
        return False, f"{UNAVAILABLE}not root"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return False, f"{UNAVAILABLE}`{tool}` not found (install {package})"
    try:
        with Namespace(2):
            pass
    except (NamespaceError, OSError) as exc:
        return False, f"{UNAVAILABLE}{_one_line(str(exc))}"
    return True, ""


# -- cleanup --------------------------------------------------------------------------------


def close_at_exit(close: Callable[[], None]) -> None:
    """Run `close` at interpreter exit, and turn SIGTERM and SIGHUP into SystemExit so that
    `with` blocks and atexit run (SIGINT already raises KeyboardInterrupt)."""
    atexit.register(close)
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) in (signal.SIG_DFL, None):
            signal.signal(signum, _exit_on_signal)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def remove_stale() -> list[str]:
    """Remove our namespaces (jl-<pid>-<hex>) whose creating process is gone; their names."""
    if not NETNS_DIR.is_dir():
        return []
    removed = []
    for path in sorted(NETNS_DIR.iterdir()):
        parts = path.name.split("-")
        if len(parts) != 3 or parts[0] + "-" != NAME_PREFIX or not parts[1].isdigit():
            continue
        if _pid_running(int(parts[1])):
            continue
        stale = Namespace(1, name=path.name)
        stale._created = True
        stale.close()
        removed.append(path.name)
    return removed


# -- helpers --------------------------------------------------------------------------------


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise NamespaceError(f"`{name}` not found")
    return found


def _command(
    argv: Sequence[str],
    *,
    input_text: str | None = None,
    timeout_s: float = COMMAND_TIMEOUT_S,
    gid: int | None = None,
) -> str:
    full = [_tool(argv[0]), *argv[1:]]
    try:
        done = subprocess.run(  # noqa: S603 - argv comes from our own code
            full,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            group=gid,
            extra_groups=None if gid is None else [],
        )
    except subprocess.TimeoutExpired:
        raise NamespaceError(f"{' '.join(argv)}: no answer in {timeout_s:.0f} s") from None
    if done.returncode != 0:
        reason = _one_line(done.stderr) or f"exit status {done.returncode}"
        raise NamespaceError(f"{' '.join(argv[:5])}: {reason}")
    return done.stdout


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _setns(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _setns_fd(fd)
    finally:
        os.close(fd)


def _setns_fd(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise NamespaceError(f"setns: {os.strerror(errno)}")


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_all(pids: Callable[[], list[int]], wait_s: float) -> None:
    """SIGKILL every pid `pids()` lists until it lists none, for at most `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        found = pids()
        if not found or time.monotonic() > deadline:
            return
        for pid in found:  # a killed process leaves the list at once, even unreaped
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(POLL_S)  # polling the namespace's processes under a deadline
