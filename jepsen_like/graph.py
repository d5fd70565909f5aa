"""Dependency graphs of transactions, their strongly connected components and cycles.

Theory of operation. A graph is a list of adjacency maps, `graph[a][b] = rels`, where
`rels` is a bit set of the relations that order transaction a before b: ww, wr, rw
(Adya's data dependencies), process (same process, one after the other) and realtime (a
completed before b began). A dependency cycle is an anomaly; its class follows from the
relations along it (`classify`, as Elle's cycle explainer does):

- G0: only ww; G1c: ww and wr, at least one wr;
- G-single: exactly one rw; G-nonadjacent: several rw, no two adjacent;
- G2-item: several rw, two of them adjacent;
- with a process edge the class gets "-process", with a realtime edge "-realtime".

`find_cycles` searches one strongly connected component for each class, most severe first,
with searches that are linear or near linear in the component's size:

- G0 / G1c: an SCC of the ww (ww+wr) subgraph holding a ww (wr) edge gives a cycle
  through that edge, closed by a shortest path.
- G-single: an rw edge a->b such that b reaches a through ww/wr edges; reachability comes
  from bit sets over the condensation of the ww/wr subgraph.
- G-nonadjacent: a cycle of the graph whose edges are ww/wr edges or a ww/wr edge followed
  by one rw edge (Elle's "sequential extension"), through at least one such pair.
- G2-item: two adjacent rw edges a->b->c closed by a path from c back to a avoiding b.

Each search runs first on the data relations, then with process or realtime edges too,
and is skipped when a class it would imply was already found (G0 implies G1c, G-single
implies G-nonadjacent, a base class implies its -process and -realtime variants). A
found cycle is simplified to a simple cycle and classified by what it holds, so a report
is never weaker than the truth. Each search has a deadline; a component not fully
searched by then is reported as `cycle-search-timeout`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

WW: Final = 1
WR: Final = 2
RW: Final = 4
PROCESS: Final = 8
REALTIME: Final = 16
REL_NAMES: Final = {WW: "ww", WR: "wr", RW: "rw", PROCESS: "process", REALTIME: "realtime"}
# When an edge holds several relations, an explanation names the first of these it holds.
PREFERENCE: Final = (WW, WR, PROCESS, REALTIME, RW)

Graph = list[dict[int, int]]


def new_graph(vertices: int) -> Graph:
    return [{} for _ in range(vertices)]


def link(graph: Graph, a: int, b: int, rel: int) -> None:
    if a != b:
        edges = graph[a]
        edges[b] = edges.get(b, 0) | rel


def strongly_connected_components(
    vertices: Sequence[int], successors: Callable[[int], Iterable[int]]
) -> list[list[int]]:
    """Tarjan's algorithm without recursion; components come out sinks first."""
    index_of: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    components: list[list[int]] = []
    counter = 0
    for root in vertices:
        if root in index_of:
            continue
        work: list[tuple[int, Iterator[int]]] = [(root, iter(successors(root)))]
        index_of[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            vertex, pending = work[-1]
            advanced = False
            for successor in pending:
                if successor not in index_of:
                    index_of[successor] = low[successor] = counter
                    counter += 1
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(successors(successor))))
                    advanced = True
                    break
                if successor in on_stack and index_of[successor] < low[vertex]:
                    low[vertex] = index_of[successor]
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[vertex])
            if low[vertex] == index_of[vertex]:
                component: list[int] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == vertex:
                        break
                components.append(component)
    return components


def projection(graph: Graph, members: set[int], rels: int) -> dict[int, list[int]]:
    """Successors inside `members` along edges holding any of `rels`."""
    return {a: [b for b, edge in graph[a].items() if edge & rels and b in members] for a in members}


def shortest_path(
    adjacency: dict[int, list[int]], source: int, target: int, avoid: int = -1
) -> list[int] | None:
    """Breadth-first: the vertices from source to target, or None."""
    if source == target:
        return [source]
    parent: dict[int, int] = {source: source}
    queue = deque([source])
    while queue:
        vertex = queue.popleft()
        for successor in adjacency.get(vertex, ()):
            if successor in parent or successor == avoid:
                continue
            parent[successor] = vertex
            if successor == target:
                path = [target]
                while path[-1] != source:
                    path.append(parent[path[-1]])
                path.reverse()
                return path
            queue.append(successor)
    return None


@dataclass(frozen=True)
class Step:
    source: int
    target: int
    rel: int


@dataclass(frozen=True)
class Cycle:
    """A dependency cycle: steps[i] leads from steps[i].source to steps[i].target."""

    kind: str
    steps: tuple[Step, ...]

    @property
    def vertices(self) -> list[int]:
        return [step.source for step in self.steps]


def classify(rels: Sequence[int]) -> str:
    """Elle's classification of a cycle by the relations of its steps, in order."""
    rw = sum(1 for rel in rels if rel == RW)
    adjacent_rw = any(rels[i] == RW and rels[i - 1] == RW for i in range(len(rels)))
    if rw == 1:
        base = "G-single"
    elif rw > 1:
        base = "G2-item" if adjacent_rw else "G-nonadjacent"
    elif WR in rels:
        base = "G1c"
    else:
        base = "G0"
    if REALTIME in rels:
        return base + "-realtime"
    if PROCESS in rels:
        return base + "-process"
    return base


def _simple_cycles(walk: list[int]) -> list[list[int]]:
    """A closed walk (first vertex not repeated at the end) cut into simple cycles."""
    cycles: list[list[int]] = []
    current: list[int] = []
    seen: dict[int, int] = {}
    for vertex in walk:
        if vertex in seen:
            start = seen[vertex]
            cycles.append(current[start:])
            for dropped in current[start + 1 :]:
                del seen[dropped]
            current = current[: start + 1]
        else:
            seen[vertex] = len(current)
            current.append(vertex)
    if len(current) > 1:
        cycles.append(current)
    return [cycle for cycle in cycles if len(cycle) > 1]


def _steps_of(
    graph: Graph, vertices: list[int], allowed: int, designated: dict[tuple[int, int], int]
) -> tuple[Step, ...]:
    steps: list[Step] = []
    for position, source in enumerate(vertices):
        target = vertices[(position + 1) % len(vertices)]
        edge = graph[source][target]
        rel = designated.get((source, target), 0)
        if not rel & edge:
            rel = next(r for r in PREFERENCE if r & edge & allowed)
        steps.append(Step(source, target, rel))
    return tuple(steps)


class SearchTimeout(Exception):
    """The deadline of a component's cycle search passed."""


@dataclass
class _Searcher:
    graph: Graph
    members: set[int]
    deadline: float
    clock: Callable[[], float]
    candidates_max: int = 32

    def tick(self) -> None:
        if self.clock() > self.deadline:
            raise SearchTimeout

    def cycle(self, walk: list[int], allowed: int, designated: dict[tuple[int, int], int]) -> Cycle:
        """The most severe simple cycle inside a closed walk, classified."""
        best: Cycle | None = None
        for vertices in _simple_cycles(walk):
            steps = _steps_of(self.graph, vertices, allowed, designated)
            found = Cycle(classify([step.rel for step in steps]), steps)
            if best is None or SEVERITY.index(found.kind) < SEVERITY.index(best.kind):
                best = found
        assert best is not None
        return best

    def through_edges(
        self, rels: int, through: int, designated_rel: int
    ) -> tuple[list[int], dict[tuple[int, int], int]] | None:
        """A shortest cycle in the `rels` subgraph through an edge holding `through`."""
        adjacency = projection(self.graph, self.members, rels)
        components = strongly_connected_components(sorted(self.members), adjacency.__getitem__)
        component_of = {v: number for number, c in enumerate(components) for v in c}
        best: list[int] | None = None
        best_edge = (0, 0)
        tried = 0
        for a in sorted(self.members):
            for b in adjacency[a]:
                if not self.graph[a][b] & through or component_of[a] != component_of[b]:
                    continue
                path = shortest_path(adjacency, b, a)
                tried += 1
                if path is not None and (best is None or len(path) < len(best)):
                    best, best_edge = path, (a, b)
                if tried >= self.candidates_max:
                    break
            if tried >= self.candidates_max:
                break
            self.tick()
        if best is None:
            return None
        return best, {best_edge: designated_rel}

    def single(self, base: int) -> tuple[list[int], dict[tuple[int, int], int]] | None:
        """A cycle of `base` edges plus exactly one rw edge."""
        adjacency = projection(self.graph, self.members, base)
        components = strongly_connected_components(sorted(self.members), adjacency.__getitem__)
        component_of = {v: number for number, c in enumerate(components) for v in c}
        # Sinks come first, so every component's successors are done before it.
        reach: list[int] = []
        for number, component in enumerate(components):
            bits = 1 << number
            for vertex in component:
                for successor in adjacency[vertex]:
                    other = component_of[successor]
                    if other != number:
                        bits |= reach[other]
            reach.append(bits)
        self.tick()
        best: list[int] | None = None
        best_edge = (0, 0)
        tried = 0
        for a in sorted(self.members):
            for b, edge in self.graph[a].items():
                if not edge & RW or b not in self.members:
                    continue
                if not reach[component_of[b]] >> component_of[a] & 1:
                    continue
                path = shortest_path(adjacency, b, a)
                assert path is not None
                tried += 1
                if best is None or len(path) < len(best):
                    best, best_edge = path, (a, b)
                if tried >= self.candidates_max:
                    break
            if tried >= self.candidates_max:
                break
        if best is None:
            return None
        return best, {best_edge: RW}

    def nonadjacent(self, base: int) -> tuple[list[int], dict[tuple[int, int], int]] | None:
        """A cycle of `base` edges and (base edge, rw edge) pairs, holding such a pair."""
        adjacency = projection(self.graph, self.members, base)
        anti = projection(self.graph, self.members, RW)
        middle: dict[tuple[int, int], int] = {}
        extended: dict[int, list[int]] = {}
        for a in sorted(self.members):
            targets = list(adjacency[a])
            for x in adjacency[a]:
                for b in anti[x]:
                    if b != a and (a, b) not in middle:
                        middle[(a, b)] = x
                        targets.append(b)
            extended[a] = targets
        self.tick()
        components = strongly_connected_components(sorted(self.members), extended.__getitem__)
        component_of = {v: number for number, c in enumerate(components) for v in c}
        for (a, b), x in middle.items():
            if component_of[a] != component_of[b]:
                continue
            path = shortest_path(extended, b, a)
            if path is None:
                continue
            walk = [a, x, b]
            designated = {(x, b): RW}
            for position in range(len(path) - 1):
                source, target = path[position], path[position + 1]
                if target in adjacency[source]:
                    walk.append(target)
                else:
                    via = middle[(source, target)]
                    walk.extend((via, target))
                    designated[(via, target)] = RW
            walk.pop()  # the walk closes on a
            return walk, designated
        return None

    def adjacent_pair(self, rels: int) -> tuple[list[int], dict[tuple[int, int], int]] | None:
        """A cycle a -rw-> b -rw-> c -> ... -> a over `rels` edges (which hold rw), else
        any cycle through an rw edge."""
        adjacency = projection(self.graph, self.members, rels)
        anti = projection(self.graph, self.members, RW)
        anti_in: dict[int, list[int]] = {vertex: [] for vertex in self.members}
        for a in sorted(self.members):
            for b in anti[a]:
                anti_in[b].append(a)
        tried = 0
        for b in sorted(self.members):
            if not anti[b] or not anti_in[b]:
                continue
            a = anti_in[b][0]
            for c in anti[b]:
                if c == a:
                    return [a, b], {(a, b): RW, (b, a): RW}
                path = shortest_path(adjacency, c, a, avoid=b)
                tried += 1
                if path is not None:
                    return [a, b, *path[:-1]], {(a, b): RW, (b, c): RW}
                if tried >= self.candidates_max:
                    break
            if tried >= self.candidates_max:
                break
            self.tick()
        for a in sorted(self.members):
            for b in anti[a]:
                path = shortest_path(adjacency, b, a)
                if path is not None:
                    return [a, *path[:-1]], {(a, b): RW}
        return None


BASE_KINDS: Final = ("G0", "G1c", "G-single", "G-nonadjacent", "G2-item")
SEVERITY: Final = (
    *BASE_KINDS,
    *(kind + "-process" for kind in BASE_KINDS),
    *(kind + "-realtime" for kind in BASE_KINDS),
)
# What finding a class makes redundant to search for (Elle's implied anomalies).
_IMPLIES: Final = {
    "G0": ("G1c",),
    "G-single": ("G-nonadjacent",),
}


def _implied(kind: str) -> set[str]:
    """The classes a found class makes redundant: itself, what it implies, its variants."""
    base, variant = kind, ""
    for suffix in ("-process", "-realtime"):
        if kind.endswith(suffix):
            base, variant = kind[: -len(suffix)], suffix
    suffixes = {"": ("", "-process", "-realtime"), "-process": ("-process", "-realtime")}
    bases = {base, *_IMPLIES.get(base, ())}
    return {b + suffix for b in bases for suffix in suffixes.get(variant, ("-realtime",))}


@dataclass(frozen=True)
class ComponentSearch:
    cycles: tuple[Cycle, ...]
    timed_out: bool
    unsearched: tuple[str, ...]


def find_cycles(
    graph: Graph,
    component: Iterable[int],
    extra: int,
    seconds_max: float,
    clock: Callable[[], float] = time.monotonic,
) -> ComponentSearch:
    """One cycle of each class found in a strongly connected component; see the module."""
    members = set(component)
    searcher = _Searcher(graph, members, clock() + seconds_max, clock)
    levels = [0] if not extra else [0, extra]
    found: list[Cycle] = []
    redundant: set[str] = set()
    order = [
        (kind + ("" if not level else "-" + REL_NAMES[level]), level, kind)
        for level in levels
        for kind in BASE_KINDS
    ]
    for position, (name, level, kind) in enumerate(order):
        if name in redundant:
            continue
        data = WW | WR | level
        try:
            if kind == "G0":
                hit = searcher.through_edges(WW | level, WW | level, WW)
            elif kind == "G1c":
                hit = searcher.through_edges(data, WR, WR)
            elif kind == "G-single":
                hit = searcher.single(data)
            elif kind == "G-nonadjacent":
                hit = searcher.nonadjacent(data)
            else:
                hit = searcher.adjacent_pair(data | RW)
        except SearchTimeout:
            rest = tuple(n for n, _, _ in order[position:] if n not in redundant)
            return ComponentSearch(tuple(found), True, rest)
        if hit is None:
            continue
        walk, designated = hit
        cycle = searcher.cycle(walk, data | (RW if kind not in ("G0", "G1c") else 0), designated)
        if cycle.kind in {c.kind for c in found}:
            continue
        found.append(cycle)
        redundant |= _implied(cycle.kind)
    return ComponentSearch(tuple(found), False, ())


def nontrivial_components(graph: Graph) -> list[list[int]]:
    """The strongly connected components of more than one transaction."""
    components = strongly_connected_components(
        list(range(len(graph))), lambda vertex: graph[vertex].keys()
    )
    return [sorted(component) for component in components if len(component) > 1]
