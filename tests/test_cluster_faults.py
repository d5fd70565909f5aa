"""Real node processes under faults: every acknowledged write survives, none applies twice."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import client
from client import operations
from raftstore.errors import RaftstoreError
from tests.cluster_harness import Cluster, running_cluster

DEADLINE_S = 90.0


class Load:
    """Writer threads, bounded in count and time, keeping what was acknowledged."""

    def __init__(self, sdk: Any, threads: int, work: Callable[[Any, int, int], None]) -> None:
        self.sdk = sdk
        self.work = work
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: Counter[int] = Counter()  # key -> acknowledged operations
        self.in_doubt: Counter[int] = Counter()
        self.failed = 0
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)
        ]

    def _run(self, worker: int) -> None:
        step = 0
        while not self.stop.is_set() and step < 100_000:
            step += 1
            key = worker * 100_000 + step
            try:
                self.work(self.sdk, worker, key)
            except RaftstoreError as exc:
                with self.lock:
                    if exc.in_doubt:
                        self.in_doubt[key] += 1
                    else:
                        self.failed += 1
                continue
            except BaseException as exc:
                self.errors.append(exc)
                return
            with self.lock:
                self.acked[key] += 1

    def start(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def total(self) -> int:
        with self.lock:
            return sum(self.acked.values())

    def wait_for(self, count: int, timeout_s: float = DEADLINE_S) -> None:
        deadline = time.monotonic() + timeout_s
        while self.total() < count:
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, f"only {self.total()} of {count} acknowledged"
            time.sleep(0.05)  # polling a counter under a deadline

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        assert not self.errors, self.errors


def put_unique(sdk: Any, worker: int, key: int) -> None:
    sdk.put(("test", "faults", key), {"worker": worker, "key": key})


def sdk_for(cluster: Cluster) -> Any:
    return client.connect({"hosts": cluster.hosts, "policies": {"write": {"total_timeout": 5000}}})


def leader_of_group(sdk: Any, group: int) -> str:
    answer = sdk.info("partition-map")
    leader = answer["namespaces"]["test"]["leaders"][group]
    assert leader is not None
    return str(leader)


def assert_all_present(sdk: Any, keys: list[int]) -> None:
    records = sdk.batch_read([("test", "faults", key) for key in keys])
    missing = [r.key for r in records if r.record is None]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:3]}"
    for record in records:
        assert record.record is not None
        assert record.record[2]["key"] == record.key[2]


def test_killing_a_leader_under_load_loses_no_acknowledged_write(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "cluster") as cluster:
        sdk = sdk_for(cluster)
        try:
            load = Load(sdk, threads=4, work=put_unique).start()
            load.wait_for(200)
            victim = leader_of_group(sdk, 0)
            cluster.kill(victim)
            before = load.total()
            load.wait_for(before + 300)  # writes resume on new leaders
            load.finish()
            assert_all_present(sdk, sorted(load.acked))
            assert leader_of_group(sdk, 0) != victim
            cluster.restart(victim)
            cluster.wait_stable()
            assert_all_present(sdk, sorted(load.acked))
        finally:
            sdk.close()


def increment_shared(sdk: Any, worker: int, key: int) -> None:
    counter = key % 20
    sdk.operate(("test", "faults", f"counter-{counter}"), [operations.increment("n", 1)])


def test_killing_every_node_under_load_then_restarting(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "cluster") as cluster:
        sdk = sdk_for(cluster)
        try:
            load = Load(sdk, threads=4, work=increment_shared).start()
            load.wait_for(300)
            for node in cluster.nodes:
                cluster.kill(node.node_id)
            load.finish()
        finally:
            sdk.close()
        for node in cluster.nodes:
            cluster.restart(node.node_id)
        cluster.wait_stable()
        acked = Counter({k % 20: 0 for k in load.acked})
        doubt: Counter[int] = Counter()
        for key, count in load.acked.items():
            acked[key % 20] += count
        for key, count in load.in_doubt.items():
            doubt[key % 20] += count
        sdk = sdk_for(cluster)
        try:
            for counter in range(20):
                _, _, bins = sdk.get(("test", "faults", f"counter-{counter}"))
                value = bins["n"]
                # Each acknowledged increment applied once; in-doubt ones at most once.
                assert acked[counter] <= value <= acked[counter] + doubt[counter], (
                    counter,
                    value,
                    acked[counter],
                    doubt[counter],
                )
        finally:
            sdk.close()


def node_status(sdk: Any, node_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = sdk.info("status", host=node_id)
    return answer


def test_a_follower_restarted_after_compaction_catches_up_from_a_snapshot(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path / "cluster", compaction_entries=50) as cluster:
        sdk = sdk_for(cluster)
        try:
            lagging = "n3"
            cluster.kill(lagging)
            keys = list(range(400))
            for key in keys:
                put_unique(sdk, 0, key)
            cluster.restart(lagging)
            deadline = time.monotonic() + DEADLINE_S
            while True:
                try:
                    objects = sdk.info("namespace/test", host=lagging)["objects"]
                except RaftstoreError:
                    objects = -1
                if objects == len(keys):
                    break
                assert time.monotonic() < deadline, f"{lagging} holds {objects} records"
                time.sleep(0.2)  # polling the restarted node under a deadline
            log_text = (cluster.node(lagging).directory / "node.log").read_text()
            assert re.search(r"snapshot_install", log_text), "caught up without a snapshot"
            assert_all_present(sdk, keys)
        finally:
            sdk.close()
