"""Nemeses: faults injected into a running cluster, each recorded by its start and its stop.

Rules:
- A nemesis is a small object (`Nemesis`): `start(rng)` injects one fault and returns its
  event, `stop()` ends what `start` began and returns its event. An event is a history
  record without time and index (the runner adds those):
  `{"process": "nemesis", "type": "info", "f": "start-kill", "value": {...}}`.
- `stop()` with nothing active does nothing and still returns its event; a nemesis started
  twice without a stop is our own bug (assert).
- Every choice (which fault, which nodes, which shape, how long) comes from the
  `random.Random` passed in, so a seed replays a schedule; choices that depend on the
  cluster (the leader of a group) are recorded in the event.
- Kill: SIGKILL, then restart on the same data; pause: SIGSTOP, then SIGCONT; targets are
  one node, a minority, a majority, all, or the leader of a random group.
- Partition: Jepsen's grudges (one node isolated, random halves, majorities ring, bridge)
  applied with nftables in the run's namespace (see netns). Without a namespace it refuses
  at construction with `netns.available()`'s one line. A grudge may be one-way (the
  majorities ring of 3 nodes is); over TCP a one-way drop soon stops the link both ways, as
  the sender hears no acknowledgements, so that ring leaves no majority anywhere.
- `Combined` runs a schedule: a quiet interval, one fault of a random nemesis for an
  interval, its stop, and again; bounded by a total duration and a count of faults. It
  ends with every fault stopped (nodes restarted and resumed, the network healed), also
  when it is interrupted or a nemesis fails.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from jepsen_like import netns
from jepsen_like.cluster import Cluster, ClusterError
from jepsen_like.netns import Namespace, complete_grudge

Event = dict[str, Any]
Grudge = dict[str, frozenset[str]]

NEMESIS = "nemesis"
TARGETS = ("one", "minority", "majority", "all", "leader")
KILL_TARGETS = ("one", "minority", "leader")
PAUSE_TARGETS = ("one", "minority", "leader")
SHAPES = ("one", "halves", "majorities-ring", "bridge")
NAMES = ("none", "kill", "pause", "partition", "all")
INTERVAL_S_DEFAULT = (5.0, 10.0)
FAULTS_MAX = 1000


class NemesisUnavailable(Exception):
    """This nemesis cannot run here; the message is one line saying why."""


def event(f: str, value: dict[str, Any]) -> Event:
    return {"process": NEMESIS, "type": "info", "f": f, "value": value}


class Nemesis(Protocol):
    name: str

    @property
    def active(self) -> bool: ...

    def start(self, rng: random.Random) -> Event: ...

    def stop(self) -> Event: ...


def pick_nodes(
    cluster: Cluster, target: str, rng: random.Random
) -> tuple[list[str], dict[str, Any]]:
    """The nodes `target` names, and what the choice depended on (for the event)."""
    nodes = cluster.node_ids
    count = len(nodes)
    if target == "one":
        return [rng.choice(nodes)], {}
    if target == "minority":
        return sorted(rng.sample(nodes, rng.randint(1, max(1, (count - 1) // 2)))), {}
    if target == "majority":
        return sorted(rng.sample(nodes, count // 2 + 1)), {}
    if target == "all":
        return list(nodes), {}
    if target == "leader":
        group = rng.choice(cluster.groups())
        leader = cluster.leader_of(group)
        chosen = leader if leader is not None else rng.choice(nodes)
        return [chosen], {"group": group, "leader": leader}
    raise ValueError(f"target {target!r} is not one of {', '.join(TARGETS)}")


class Kill:
    """SIGKILL some nodes; stop restarts them on their data."""

    name = "kill"

    def __init__(self, cluster: Cluster, targets: Sequence[str] = KILL_TARGETS) -> None:
        _check_choices(targets, TARGETS, "kill target")
        self.cluster = cluster
        self.targets = tuple(targets)
        self.down: list[str] = []

    @property
    def active(self) -> bool:
        return bool(self.down)

    def start(self, rng: random.Random) -> Event:
        assert not self.down, "kill started twice"
        target = rng.choice(self.targets)
        nodes, details = pick_nodes(self.cluster, target, rng)
        for node_id in nodes:
            self.down.append(node_id)  # before the kill: a failure still gets a restart
            self.cluster.kill(node_id)
        return event("start-kill", {"target": target, "nodes": nodes, **details})

    def stop(self) -> Event:
        restarted: dict[str, int] = {}
        errors: dict[str, str] = {}
        for node_id in list(self.down):
            try:
                pid = self.cluster.pid(node_id) or self.cluster.restart(node_id)
            except ClusterError as exc:
                errors[node_id] = str(exc)
                continue
            restarted[node_id] = pid
            self.down.remove(node_id)
        value: dict[str, Any] = {"nodes": sorted(restarted), "pids": restarted}
        if errors:
            value["errors"] = errors
        return event("stop-kill", value)


class Pause:
    """SIGSTOP some nodes; stop sends SIGCONT."""

    name = "pause"

    def __init__(self, cluster: Cluster, targets: Sequence[str] = PAUSE_TARGETS) -> None:
        _check_choices(targets, TARGETS, "pause target")
        self.cluster = cluster
        self.targets = tuple(targets)
        self.paused: list[str] = []

    @property
    def active(self) -> bool:
        return bool(self.paused)

    def start(self, rng: random.Random) -> Event:
        assert not self.paused, "pause started twice"
        target = rng.choice(self.targets)
        nodes, details = pick_nodes(self.cluster, target, rng)
        for node_id in nodes:
            self.paused.append(node_id)
            self.cluster.pause(node_id)
        return event("start-pause", {"target": target, "nodes": nodes, **details})

    def stop(self) -> Event:
        resumed: list[str] = []
        errors: dict[str, str] = {}
        for node_id in self.paused:
            try:
                self.cluster.resume(node_id)
                resumed.append(node_id)
            except ClusterError as exc:  # killed meanwhile: nothing left to resume
                errors[node_id] = str(exc)
        self.paused = []
        value: dict[str, Any] = {"nodes": sorted(resumed)}
        if errors:
            value["errors"] = errors
        return event("stop-pause", value)


class Partition:
    """Cut links with nftables in the run's namespace; stop heals every link."""

    name = "partition"

    def __init__(
        self, cluster: Cluster, namespace: Namespace | None, shapes: Sequence[str] = SHAPES
    ) -> None:
        if namespace is None:
            ok, reason = netns.available()
            raise NemesisUnavailable(
                reason if not ok else "partition needs the cluster inside the run's namespace"
            )
        _check_choices(shapes, SHAPES, "partition shape")
        self.cluster = cluster
        self.namespace = namespace
        self.shapes = tuple(shapes)
        self.cut = False

    @property
    def active(self) -> bool:
        return self.cut

    def start(self, rng: random.Random) -> Event:
        assert not self.cut, "partition started twice"
        shape = rng.choice(self.shapes)
        grudge = grudge_for(shape, self.cluster.node_ids, rng)
        self.cut = True  # before the change: a failure still gets a heal
        self.namespace.apply_grudge(grudge)
        value = {node: sorted(sources) for node, sources in sorted(grudge.items()) if sources}
        return event("start-partition", {"shape": shape, "grudge": value})

    def stop(self) -> Event:
        self.namespace.heal()
        self.cut = False
        return event("stop-partition", {"grudge": {}})


# -- grudges (pure functions of the node list and the rng, after Jepsen's nemesis.clj) -------


def grudge_for(shape: str, nodes: Sequence[str], rng: random.Random) -> Grudge:
    """node -> the nodes it drops traffic from, for one of SHAPES."""
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    if shape == "one":
        return complete_grudge([shuffled[:1], shuffled[1:]])
    if shape == "halves":
        half = len(shuffled) // 2
        return complete_grudge([shuffled[:half], shuffled[half:]])
    if shape == "majorities-ring":
        return majorities_ring(shuffled)
    if shape == "bridge":
        return bridge(shuffled)
    raise ValueError(f"shape {shape!r} is not one of {', '.join(SHAPES)}")


def majorities_ring(ring: Sequence[str]) -> Grudge:
    """Each node sees a majority, and no two see the same one: the window of `majority`
    consecutive nodes around it in `ring` (Jepsen's majorities-ring-perfect)."""
    count = len(ring)
    majority = count // 2 + 1
    everyone = frozenset(ring)
    grudge: Grudge = {}
    for start in range(count):
        window = [ring[(start + i) % count] for i in range(majority)]
        grudge[window[len(window) // 2]] = everyone - frozenset(window)
    return grudge


def bridge(nodes: Sequence[str]) -> Grudge:
    """Two halves that cannot talk, and one node that talks to both (Jepsen's bridge)."""
    half = len(nodes) // 2
    first, second = list(nodes[:half]), list(nodes[half:])
    return complete_grudge([first, second[1:]])


# -- schedules ------------------------------------------------------------------------------


class Combined:
    """Faults of several nemeses on a schedule, one at a time (see the module rules)."""

    name = "combined"

    def __init__(
        self,
        nemeses: Sequence[Nemesis],
        *,
        interval_s: tuple[float, float] = INTERVAL_S_DEFAULT,
        duration_s: float,
        faults_max: int = FAULTS_MAX,
    ) -> None:
        low, high = interval_s
        if not 0 < low <= high:
            raise ValueError(f"interval_s {interval_s}: need 0 < low <= high")
        if duration_s <= 0 or faults_max < 0:
            raise ValueError("duration_s must be > 0 and faults_max >= 0")
        self.nemeses = tuple(nemeses)
        self.interval_s = (low, high)
        self.duration_s = duration_s
        self.faults_max = faults_max

    @property
    def active(self) -> bool:
        return any(nemesis.active for nemesis in self.nemeses)

    def run(
        self,
        rng: random.Random,
        record: Callable[[Event], None],
        stop: threading.Event | None = None,
    ) -> int:
        """Run the schedule until `duration_s` passed, `stop` is set or `faults_max` faults
        were injected; every fault is stopped on the way out. The number of faults."""
        stop = stop or threading.Event()
        deadline = time.monotonic() + self.duration_s
        faults = 0
        try:
            while self.nemeses and faults < self.faults_max:
                if _wait(rng.uniform(*self.interval_s), deadline, stop):
                    break
                nemesis = rng.choice(self.nemeses)
                faults += 1
                record(nemesis.start(rng))
                _wait(rng.uniform(*self.interval_s), deadline, stop)
                record(nemesis.stop())
        finally:
            for ended in self.stop_all():
                record(ended)
        return faults

    def stop_all(self) -> list[Event]:
        """Stop every active fault (the final heal); their events."""
        return [nemesis.stop() for nemesis in self.nemeses if nemesis.active]


def build(
    spec: str,
    cluster: Cluster,
    namespace: Namespace | None,
    *,
    interval_s: tuple[float, float] = INTERVAL_S_DEFAULT,
    duration_s: float,
) -> Combined:
    """The schedule for `--nemesis`: none, kill, pause, partition, all, or a comma list.
    NemesisUnavailable (one line) when partition is asked for and cannot run."""
    names: list[str] = []
    for part in (word.strip() for word in spec.split(",")):
        if part not in NAMES:
            raise ValueError(f"nemesis {part!r} is not one of {', '.join(NAMES)}")
        names += ["kill", "pause", "partition"] if part == "all" else [part]
    nemeses: list[Nemesis] = []
    for name in dict.fromkeys(names):  # unique, in order
        if name == "kill":
            nemeses.append(Kill(cluster))
        elif name == "pause":
            nemeses.append(Pause(cluster))
        elif name == "partition":
            nemeses.append(Partition(cluster, namespace))
    return Combined(nemeses, interval_s=interval_s, duration_s=duration_s)


def _wait(seconds: float, deadline: float, stop: threading.Event) -> bool:
    """Sleep `seconds` but not past `deadline`; True when the schedule should end."""
    remaining = deadline - time.monotonic()
    if stop.wait(max(0.0, min(seconds, remaining))):
        return True
    return time.monotonic() >= deadline


def _check_choices(chosen: Sequence[str], known: Sequence[str], what: str) -> None:
    if not chosen:
        raise ValueError(f"no {what} given")
    for item in chosen:
        if item not in known:
            raise ValueError(f"{what} {item!r} is not one of {', '.join(known)}")
