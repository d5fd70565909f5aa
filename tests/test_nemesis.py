"""The checker's fault side on real processes: the run's network namespace, nftables cuts,
and a 3-node cluster under kill, pause and partition.

Tests that truly need a namespace (root, `ip`, `nft`) skip with `netns.available()`'s one
line, except where the environment promises namespaces (`REQUIRE_NETNS`, set by `.ci/run`
once it installed nftables as root): there a missing namespace fails instead of skipping;
the partition tests on the cluster assert the refusal instead when it is unavailable,
and the cluster then runs on 127.0.0.1 for kill and pause. Pure parts (grudges, targets,
schedules) run everywhere. Every wait has a deadline; every process is stopped by its pid.
"""

from __future__ import annotations

import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import client
from jepsen_like import cluster as cluster_module
from jepsen_like import nemesis, netns
from jepsen_like.cluster import Cluster, ClusterError
from jepsen_like.netns import Namespace
from raftstore.errors import RaftstoreError
from server import launcher

WAIT_S = 30.0  # deadline of every wait on the cluster (loaded 2-core machines are slow)
PROBE_PORT = 7000
POLICY = {"total_timeout": 5000, "socket_timeout": 1000, "max_retries": 5}

# A member's socket program: `serve ADDR` (TCP and UDP echo), `talk SRC DST` (one TCP
# exchange, exit 0 when echoed), `chat SRC DST` (one connection kept; per stdin line an
# exchange, answering "ok" or "timeout"), `send-udp SRC DST` (one datagram, no answer awaited).
PROBE = r"""
import select, socket, sys, threading
PORT = int(sys.argv[-1])
def echo_tcp(conn):
    with conn:
        while data := conn.recv(64):
            conn.sendall(data)
def exchange(sock):
    try:
        sock.sendall(b"x")
        return sock.recv(64).startswith(b"x")  # echoes held up by a cut may come together
    except OSError:
        return False
mode, src = sys.argv[1], sys.argv[2]
if mode == "serve":
    tcp = socket.create_server((src, PORT))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((src, PORT))
    def log_udp():
        while True:
            data, peer = udp.recvfrom(64)
            print(f"udp {peer[0]}", flush=True)
    threading.Thread(target=log_udp, daemon=True).start()
    while True:
        conn, _ = tcp.accept()
        threading.Thread(target=echo_tcp, args=(conn,), daemon=True).start()
dst = sys.argv[3]
if mode == "send-udp":
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((src, 0))
    udp.sendto(b"x", (dst, PORT))
    sys.exit(0)
try:
    sock = socket.create_connection((dst, PORT), timeout=1.0, source_address=(src, 0))
except OSError:
    print("timeout", flush=True)
    sys.exit(1)
if mode == "talk":
    sys.exit(0 if exchange(sock) else 1)
print("connected", flush=True)
for _ in sys.stdin:
    print("ok" if exchange(sock) else "timeout", flush=True)
"""


REQUIRE_NETNS = "RAFTSTORE_REQUIRE_NETNS"


def needs_namespace() -> None:
    ok, reason = netns.available()
    if not ok:
        if os.environ.get(REQUIRE_NETNS):
            pytest.fail(f"{REQUIRE_NETNS} is set but {reason}")
        pytest.skip(reason)


def netns_list() -> str:
    return subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True, timeout=10
    ).stdout


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.05)  # polling a condition under a deadline


# -- pure parts -------------------------------------------------------------------------------


def test_members_have_their_own_address_and_group() -> None:
    found = netns.members(3)
    assert [(m.name, m.address, m.gid) for m in found] == [
        ("n1", "127.0.0.11", 4211),
        ("n2", "127.0.0.12", 4212),
        ("n3", "127.0.0.13", 4213),
    ]
    with pytest.raises(ValueError, match=r"1\.\.9"):
        netns.members(10)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 9])
def test_grudges_have_their_shapes(count: int) -> None:
    nodes = [f"n{i}" for i in range(1, count + 1)]
    everyone = frozenset(nodes)
    majority = count // 2 + 1
    for seed in range(5):
        rng = random.Random(seed)
        one = nemesis.grudge_for("one", nodes, rng)
        sides = {frozenset(everyone - dropped) for dropped in one.values()}
        splits = [{frozenset({node}), everyone - {node}} - {frozenset()} for node in nodes]
        assert sides in splits
        halves = nemesis.grudge_for("halves", nodes, rng)
        sides = {frozenset(everyone - dropped) for dropped in halves.values()}
        expected = sorted(size for size in (count // 2, count - count // 2) if size)
        assert sorted(len(side) for side in sides) == expected
        ring = nemesis.grudge_for("majorities-ring", nodes, rng)
        assert set(ring) == everyone
        seen = [everyone - dropped for dropped in ring.values()]
        assert all(len(side) == majority for side in seen)
        assert all(node in everyone - ring[node] for node in nodes)
        if count >= 3:
            assert len(set(seen)) == count  # no two nodes see the same majority
        bridged = nemesis.grudge_for("bridge", nodes, rng)
        bridges = everyone - {node for node, dropped in bridged.items() if dropped}
        assert bridges and all(not (dropped & bridges) for dropped in bridged.values())


def test_grudges_are_seeded() -> None:
    nodes = ["n1", "n2", "n3", "n4", "n5"]
    for shape in nemesis.SHAPES:
        first = nemesis.grudge_for(shape, nodes, random.Random(42))
        assert first == nemesis.grudge_for(shape, nodes, random.Random(42))


@dataclass
class StubCluster:
    """What target choice asks of a cluster."""

    node_ids: list[str] = field(default_factory=lambda: ["n1", "n2", "n3", "n4", "n5"])
    leader: str | None = "n4"

    def groups(self) -> list[str]:
        return ["test/0", "test/1"]

    def leader_of(self, group: str) -> str | None:
        return self.leader


def test_targets_name_the_right_nodes() -> None:
    stub: Any = StubCluster()
    rng = random.Random(1)
    for _ in range(20):
        assert len(nemesis.pick_nodes(stub, "one", rng)[0]) == 1
        assert 1 <= len(nemesis.pick_nodes(stub, "minority", rng)[0]) <= 2
        assert len(nemesis.pick_nodes(stub, "majority", rng)[0]) == 3
    assert nemesis.pick_nodes(stub, "all", rng)[0] == stub.node_ids
    nodes, details = nemesis.pick_nodes(stub, "leader", rng)
    assert nodes == ["n4"] and details["leader"] == "n4"
    with pytest.raises(ValueError, match="target"):
        nemesis.pick_nodes(stub, "most", rng)


@dataclass
class FakeNemesis:
    name: str
    calls: list[str] = field(default_factory=list)
    running: bool = False

    @property
    def active(self) -> bool:
        return self.running

    def start(self, rng: random.Random) -> nemesis.Event:
        assert not self.running
        self.running = True
        self.calls.append("start")
        return nemesis.event(f"start-{self.name}", {"draw": rng.random()})

    def stop(self) -> nemesis.Event:
        self.running = False
        self.calls.append("stop")
        return nemesis.event(f"stop-{self.name}", {})


def run_schedule(seed: int, **options: Any) -> list[nemesis.Event]:
    events: list[nemesis.Event] = []
    fakes = [FakeNemesis("kill"), FakeNemesis("pause")]
    combined = nemesis.Combined(fakes, interval_s=(0.01, 0.02), **options)
    combined.run(random.Random(seed), events.append)
    assert not combined.active
    return events


def test_a_schedule_alternates_starts_and_stops_and_ends_healed() -> None:
    events = run_schedule(3, duration_s=0.4)
    assert events and all(e["process"] == "nemesis" and e["type"] == "info" for e in events)
    assert [e["f"].split("-")[0] for e in events] == ["start", "stop"] * (len(events) // 2)
    for started, stopped in zip(events[::2], events[1::2], strict=True):
        assert started["f"].split("-")[1] == stopped["f"].split("-")[1]
    assert len(run_schedule(3, duration_s=5.0, faults_max=2)) == 4


def test_a_schedule_is_seeded_and_stops_on_request() -> None:
    first = [e["value"].get("draw") for e in run_schedule(9, duration_s=10.0, faults_max=3)]
    assert first == [e["value"].get("draw") for e in run_schedule(9, duration_s=10.0, faults_max=3)]
    fake = FakeNemesis("kill")
    stop = threading.Event()
    events: list[nemesis.Event] = []
    combined = nemesis.Combined([fake], interval_s=(0.05, 0.05), duration_s=60.0)
    worker = threading.Thread(target=combined.run, args=(random.Random(1), events.append, stop))
    began = time.monotonic()
    worker.start()
    wait_for(lambda: fake.running, 5.0, "a fault starts")
    stop.set()
    worker.join(timeout=5.0)
    assert not worker.is_alive() and time.monotonic() - began < 5.0
    assert events[-1]["f"] == "stop-kill" and not fake.running


def test_cluster_layout_matches_the_launcher() -> None:
    assert cluster_module.RAFT_PORT_OFFSET == launcher.RAFT_PORT_OFFSET
    assert cluster_module.RAFT_PORTS_PER_NODE == launcher.RAFT_PORTS_PER_NODE
    assert cluster_module.PARTITION_GROUPS == launcher.PARTITION_GROUPS_DEFAULT
    assert cluster_module.NAMESPACE == launcher.NAMESPACE_DEFAULT


# -- availability and refusal -----------------------------------------------------------------


def test_availability_is_a_verdict_and_one_line() -> None:
    ok, reason = netns.available()
    assert isinstance(ok, bool)
    assert "\n" not in reason
    assert ok or reason.startswith("partition needs root and nftables: ")
    # Where namespaces are promised (CI), the refusal paths of the other tests must not be
    # what runs: they would pass without a single partition.
    assert ok or not os.environ.get(REQUIRE_NETNS), reason


def test_partition_is_refused_in_one_line_without_a_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(netns, "_available", None)  # the cached verdict comes back after
    with monkeypatch.context() as patched:
        patched.setattr(netns.os, "geteuid", lambda: 1000)
        assert netns.available() == (False, "partition needs root and nftables: not root")
    monkeypatch.setenv(netns.DISABLE_VARIABLE, "off")
    ok, reason = netns.available(refresh=True)
    assert not ok
    assert reason == "partition needs root and nftables: turned off by JEPSEN_LIKE_NETNS=off"
    stub: Any = StubCluster()
    with pytest.raises(nemesis.NemesisUnavailable) as refused:
        nemesis.Partition(stub, None)
    assert str(refused.value) == reason
    with pytest.raises(nemesis.NemesisUnavailable, match=r"^partition needs root"):
        nemesis.build("all", stub, None, duration_s=1.0)
    assert [n.name for n in nemesis.build("kill,pause", stub, None, duration_s=1.0).nemeses] == [
        "kill",
        "pause",
    ]


# -- the namespace ----------------------------------------------------------------------------


def test_a_namespace_is_created_and_removed_with_what_runs_inside() -> None:
    needs_namespace()
    namespace = Namespace(2)
    assert namespace.name not in netns_list()
    with namespace:
        assert namespace.name in netns_list()
        sleeper = namespace.popen(["sleep", "60"])
        wait_for(lambda: namespace.pids() == [sleeper.pid], 10.0, "the process is inside")
        assert not namespace.is_current()
        with namespace.entered():
            assert namespace.is_current()
        assert not namespace.is_current()
    assert sleeper.wait(timeout=10) == -9  # killed by pid at close
    assert namespace.name not in netns_list()
    namespace.close()  # idempotent


# A run that owns a namespace with a process inside, and is stopped by a signal.
OWNER = r"""
import sys, time
from jepsen_like import netns
namespace = netns.Namespace(2)
netns.close_at_exit(namespace.close)
with namespace:
    sleeper = namespace.popen(["sleep", "60"])
    print(namespace.name, sleeper.pid, flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_run_removes_its_namespace(signum: int) -> None:
    needs_namespace()
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert owner.stdout is not None
    ready, _, _ = select.select([owner.stdout], [], [], 30.0)
    assert ready, "the run did not start"
    name, sleeper = owner.stdout.readline().decode().split()
    assert name in netns_list()
    owner.send_signal(signum)
    assert owner.wait(timeout=30) != 0
    owner.stdout.close()
    assert name not in netns_list()
    assert not running(int(sleeper))


def running(pid: int) -> bool:
    """Whether `pid` runs: neither gone nor a zombie (pid 1 here reaps orphans lazily)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_stale_namespaces_are_removed() -> None:
    needs_namespace()
    gone = subprocess.Popen(["true"])
    gone.wait(timeout=10)
    stale = f"jl-{gone.pid}-0000aa"
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=10)
    try:
        assert stale in netns.remove_stale()
        assert stale not in netns_list()
    finally:
        subprocess.run(["ip", "netns", "delete", stale], check=False, timeout=10)


def test_addresses_talk_until_cut_and_again_after_heal(tmp_path: Path) -> None:
    needs_namespace()
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE, encoding="utf-8")
    with Namespace(3) as namespace:
        python = [sys.executable, str(probe)]

        def serve(member: str) -> subprocess.Popen[bytes]:
            address = namespace.member(member).address
            return namespace.popen(
                [*python, "serve", address, str(PROBE_PORT)],
                member=member,
                stdout=subprocess.PIPE,
            )

        def talks(source: str, target: str) -> bool:
            argv = ["talk", namespace.member(source).address, namespace.member(target).address]
            try:
                namespace.run([*python, *argv, str(PROBE_PORT)], member=source)
            except netns.NamespaceError:
                return False
            return True

        servers = [serve("n1"), serve("n2")]
        wait_for(lambda: talks("n1", "n2") and talks("n2", "n1"), 10.0, "the servers listen")
        chat = Chat(namespace, python, "n1", "n2")
        assert chat.exchange() == "ok"

        namespace.cut("127.0.0.11", "127.0.0.12")
        assert not talks("n1", "n2") and not talks("n2", "n1")
        assert chat.exchange() == "timeout"  # an established connection is cut as well
        with namespace.entered():  # not a node (group 0): reaches every node, as a client
            for address in ("127.0.0.11", "127.0.0.12"):
                with socket.create_connection((address, PROBE_PORT), timeout=2.0) as sock:
                    sock.sendall(b"x")
                    assert sock.recv(64) == b"x"
        assert talks("n3", "n1")  # n3 keeps its links

        namespace.heal()
        assert talks("n1", "n2") and talks("n2", "n1")
        # TCP retransmits with backoff: the old connection lives again within seconds.
        wait_for(lambda: chat.exchange() == "ok", 20.0, "the old connection carries data")
        chat.close()
        for server in servers:
            server.kill()
            server.wait(timeout=10)
            assert server.stdout is not None
            server.stdout.close()
    assert namespace.name not in netns_list()


def test_a_grudge_drops_one_direction_only(tmp_path: Path) -> None:
    needs_namespace()
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE, encoding="utf-8")
    with Namespace(2) as namespace:
        python = [sys.executable, str(probe)]
        servers = {
            member: namespace.popen(
                [*python, "serve", namespace.member(member).address, str(PROBE_PORT)],
                member=member,
                stdout=subprocess.PIPE,
            )
            for member in ("n1", "n2")
        }

        def datagram_arrives(source: str, target: str) -> bool:
            src, dst = namespace.member(source).address, namespace.member(target).address
            stdout = servers[target].stdout
            assert stdout is not None
            namespace.run([*python, "send-udp", src, dst, str(PROBE_PORT)], member=source)
            if not select.select([stdout], [], [], 2.0)[0]:
                return False
            assert stdout.readline().decode().strip() == f"udp {src}"
            return True

        wait_for(lambda: datagram_arrives("n1", "n2"), 10.0, "n2 listens")
        wait_for(lambda: datagram_arrives("n2", "n1"), 10.0, "n1 listens")
        namespace.apply_grudge({"n2": ["n1"]})  # n2 drops what n1 sends
        assert datagram_arrives("n2", "n1")
        assert not datagram_arrives("n1", "n2")
        assert namespace.grudge == {"n2": frozenset({"n1"})}
        for server in servers.values():
            server.kill()
            server.wait(timeout=10)
            assert server.stdout is not None
            server.stdout.close()


class Chat:
    """A member's long-lived TCP connection to another member, driven line by line."""

    def __init__(self, namespace: Namespace, python: list[str], source: str, target: str):
        argv = ["chat", namespace.member(source).address, namespace.member(target).address]
        member = namespace.member(source)
        self.process = subprocess.Popen(
            namespace.command([*python, *argv, str(PROBE_PORT)]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            group=member.gid,
            extra_groups=[],
        )
        assert self.read(10.0) == "connected"

    def read(self, timeout_s: float) -> str:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        assert ready, "the chat process did not answer"
        return self.process.stdout.readline().decode().strip()

    def exchange(self) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(b"\n")
        self.process.stdin.flush()
        return self.read(10.0)

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


# -- a cluster under faults -------------------------------------------------------------------


@dataclass
class Environment:
    cluster: Cluster
    namespace: Namespace | None


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    """Three nodes inside a namespace of their own when possible, else on 127.0.0.1."""
    data = tmp_path_factory.mktemp("nemesis") / "data"
    ok, _ = netns.available()
    if not ok:
        running = Cluster(data, 3)
        try:
            running.start()
            yield Environment(running, None)
        finally:
            running.stop()
        return
    with Namespace(3) as namespace, namespace.entered():
        running = Cluster(data, 3, namespace=namespace)
        try:
            running.start()
            yield Environment(running, namespace)
        finally:
            running.stop()


def answers(cluster: Cluster, down: list[str] | tuple[str, ...] = ()) -> None:
    """A fresh client, seeded with the nodes that are up, writes and reads keys of every
    group; retried under a deadline while leaders move."""
    pairs = zip(cluster.node_ids, cluster.hosts, strict=True)
    hosts = [host for node_id, host in pairs if node_id not in down]
    config = {"hosts": hosts, "policies": {"read": POLICY, "write": POLICY}}
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            with client.connect(config) as sdk:
                for number in range(12):
                    key = ("test", "nemesis", f"k{number}")
                    sdk.put(key, {"v": number})
                    assert sdk.get(key)[2] == {"v": number}
            return
        except RaftstoreError as exc:
            assert time.monotonic() < deadline, f"the cluster does not answer: {exc}"


def test_the_cluster_is_stable_and_every_group_has_a_leader(environment: Environment) -> None:
    cluster = environment.cluster
    cluster.wait_stable(WAIT_S)
    leaders = cluster.leaders()
    assert set(leaders) == set(cluster.groups())
    assert all(leader in cluster.node_ids for leader in leaders.values())
    if environment.namespace is not None:
        assert [host for host, _ in cluster.hosts] == ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
    answers(cluster)


def test_an_isolated_leader_loses_its_group(environment: Environment) -> None:
    cluster, namespace = environment.cluster, environment.namespace
    if namespace is None:
        ok, reason = netns.available()
        assert not ok
        with pytest.raises(nemesis.NemesisUnavailable, match=f"^{re.escape(reason)}$"):
            nemesis.Partition(cluster, None)
        return
    cluster.wait_stable(WAIT_S)
    group = cluster.groups()[0]
    old = cluster.leader_of(group)
    assert old is not None
    namespace.isolate(old)
    try:
        cluster.wait_until(
            lambda: cluster.leader_of(group) not in (None, old), WAIT_S, "another node leads"
        )

        def stepped_down() -> bool:
            status = cluster.status(old)
            return status is not None and status["groups"][group]["role"] != "leader"

        cluster.wait_until(stepped_down, WAIT_S, f"{old} steps down")
        answers(cluster)  # the majority side serves every group
    finally:
        namespace.heal()
    cluster.wait_stable(WAIT_S)
    answers(cluster)


def test_kill_and_restart_keep_the_cluster_answering(environment: Environment) -> None:
    cluster = environment.cluster
    cluster.wait_stable(WAIT_S)
    kill = nemesis.Kill(cluster, ["leader"])
    started = kill.start(random.Random(5))
    assert started["f"] == "start-kill" and started["value"]["target"] == "leader"
    victim = started["value"]["nodes"][0]
    assert victim == started["value"]["leader"] and not cluster.alive(victim)
    answers(cluster, down=[victim])
    stopped = kill.stop()
    assert stopped["f"] == "stop-kill" and stopped["value"]["nodes"] == [victim]
    assert cluster.alive(victim) and not kill.active
    cluster.wait_stable(WAIT_S)
    answers(cluster)


def test_pause_and_resume_keep_the_cluster_answering(environment: Environment) -> None:
    cluster = environment.cluster
    cluster.wait_stable(WAIT_S)
    pause = nemesis.Pause(cluster, ["leader"])
    started = pause.start(random.Random(2))
    victim = started["value"]["nodes"][0]
    assert started["f"] == "start-pause" and cluster.paused == {victim}
    # The SDK keeps sending to a paused leader it knows (no answer is not "not leader"), so
    # a client seeded without it shows the others took over.
    answers(cluster, down=[victim])
    assert pause.stop()["value"] == {"nodes": [victim]}
    assert not cluster.paused
    cluster.wait_stable(WAIT_S)
    answers(cluster)


def test_a_combined_schedule_ends_with_every_fault_stopped(environment: Environment) -> None:
    cluster, namespace = environment.cluster, environment.namespace
    spec = "all" if namespace is not None else "kill,pause"
    schedule = nemesis.build(spec, cluster, namespace, interval_s=(0.3, 0.6), duration_s=3.0)
    events: list[nemesis.Event] = []
    faults = schedule.run(random.Random(11), events.append)
    assert faults >= 1 and len(events) == 2 * faults
    assert not schedule.active and not cluster.paused
    if namespace is not None:
        assert namespace.grudge == {}
    assert all(cluster.alive(node_id) for node_id in cluster.node_ids)
    cluster.wait_stable(WAIT_S)
    answers(cluster)


def test_nothing_is_left_running(environment: Environment) -> None:
    cluster, namespace = environment.cluster, environment.namespace
    pids = [cluster.pid(node_id) for node_id in cluster.node_ids]
    assert all(pid is not None for pid in pids)
    cluster.stop()
    assert not any(cluster.alive(node_id) for node_id in cluster.node_ids)
    with pytest.raises(ClusterError):
        cluster.resume("n1")
    if namespace is None:
        return
    assert namespace.pids() == []
    namespace.close()
    assert namespace.name not in netns_list()
    assert not namespace.exists()
