"""The engine on LMDB beside a plain dict model, with close-and-reopen at random points."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from raftstore import keys, limits
from raftstore import ops as op
from raftstore.clock import CITRUSLEAF_EPOCH_S
from raftstore.commands import Command, RecordRequest, Result
from raftstore.config import NamespaceConfig
from raftstore.engine import Engine
from raftstore.errors import ResultCode
from raftstore.policy import Exists, WritePolicy

NOW_MS = (CITRUSLEAF_EPOCH_S + 500_000_000) * 1000
NAMESPACE = NamespaceConfig("model")
KEYS = st.integers(0, 7)
BINS = st.sampled_from(["a", "b", "c"])
VALUES = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.lists(st.integers(0, 9), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=3),
)


@dataclass
class ModelRecord:
    generation: int = 0
    bins: dict[str, Any] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return bool(self.bins)


class EngineVersusDict(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="raftstore-model-"))
        self.engine = Engine(self.dir / "g", NAMESPACE)
        self.model: dict[int, ModelRecord] = {}
        self.position = 0
        self.seq = 0
        self.history: list[tuple[RecordRequest, Result]] = []

    def teardown(self) -> None:
        self.engine.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def request(self, key: int, ops: list[op.Op], policy: WritePolicy | None = None) -> Result:
        self.seq += 1
        request = RecordRequest(
            client_id=1,
            request_seq=self.seq,
            acked_seq=max(0, self.seq - 10),
            now_ms=NOW_MS + self.seq,
            digest=keys.calc_digest("model", "s", key),
            set_name="s",
            ops=tuple(ops),
            policy=policy or WritePolicy(),
        )
        result = self.apply([request])[0]
        self.history.append((request, result))
        return result

    def apply(self, commands: list[Command]) -> list[Result]:
        self.position += 1
        results = self.engine.apply(self.position, commands)
        assert results is not None
        return results

    def record(self, key: int) -> ModelRecord:
        return self.model.setdefault(key, ModelRecord())

    @rule(key=KEYS, name=BINS, value=VALUES)
    def write(self, key: int, name: str, value: Any) -> None:
        result = self.request(key, [op.write(name, value)])
        assert result.code == ResultCode.OK, result
        model = self.record(key)
        model.generation += 1
        model.bins[name] = value
        assert result.generation == model.generation

    @rule(key=KEYS, name=BINS)
    def remove_bin(self, key: int, name: str) -> None:
        model = self.record(key)
        result = self.request(key, [op.write(name, None)])
        if not model.live:
            assert result.code != ResultCode.OK
            return
        assert result.code == ResultCode.OK, result
        model.generation += 1
        model.bins.pop(name, None)

    @rule(key=KEYS, value=VALUES)
    def create_only(self, key: int, value: Any) -> None:
        model = self.record(key)
        result = self.request(key, [op.write("a", value)], WritePolicy(exists=Exists.CREATE))
        if model.live:
            assert result.code == ResultCode.RECORD_EXISTS
            return
        assert result.code == ResultCode.OK
        model.generation += 1
        model.bins = {"a": value}

    @rule(key=KEYS)
    def delete(self, key: int) -> None:
        model = self.record(key)
        result = self.request(key, [op.delete()])
        if not model.live:
            assert result.code == ResultCode.RECORD_NOT_FOUND
            return
        assert result.code == ResultCode.OK
        model.generation += 1
        model.bins = {}

    @rule(key=KEYS, delta=st.integers(-1000, 1000))
    def increment(self, key: int, delta: int) -> None:
        model = self.record(key)
        result = self.request(key, [op.increment("n", delta)])
        current = model.bins.get("n", 0)
        if not isinstance(current, int) or isinstance(current, bool):
            assert result.code == ResultCode.BIN_INCOMPATIBLE_TYPE
            return
        assert result.code == ResultCode.OK, result
        model.generation += 1
        model.bins["n"] = current + delta

    @rule(key=KEYS)
    def read(self, key: int) -> None:
        model = self.record(key)
        digest = keys.calc_digest("model", "s", key)
        result = self.engine.read(digest, [op.read()], NOW_MS + self.seq)
        if not model.live:
            assert result.code == ResultCode.RECORD_NOT_FOUND
            return
        assert result.code == ResultCode.OK
        assert result.generation == model.generation
        assert dict(result.results) == model.bins

    @rule(batch_keys=st.lists(KEYS, min_size=1, max_size=14), data=st.data())
    def a_batch_of_increments(self, batch_keys: list[int], data: st.DataObject) -> None:
        """Many requests in one batch (the later ones acknowledging the earlier ones' answers),
        and a retry of one of them in the same batch: each applied once, the retry answered
        alike."""
        requests = []
        for key in batch_keys:
            self.seq += 1
            requests.append(
                RecordRequest(
                    client_id=1,
                    request_seq=self.seq,
                    acked_seq=max(0, self.seq - 10),
                    now_ms=NOW_MS + self.seq,
                    digest=keys.calc_digest("model", "s", key),
                    set_name="s",
                    ops=(op.increment("n", 1),),
                )
            )
        retry = data.draw(st.sampled_from(requests[-10:]))  # still above the session floor
        results = self.apply([*requests, retry])
        assert results[-1] == results[requests.index(retry)]
        for key, request, result in zip(batch_keys, requests, results, strict=False):
            model = self.record(key)
            current = model.bins.get("n", 0)
            if not isinstance(current, int) or isinstance(current, bool):
                assert result.code == ResultCode.BIN_INCOMPATIBLE_TYPE
            elif current + 1 > limits.INT_MAX:
                assert result.code == ResultCode.PARAMETER_ERROR
            else:
                assert result.code == ResultCode.OK, result
                model.generation += 1
                model.bins["n"] = current + 1
            self.history.append((request, result))

    @precondition(lambda self: bool(self.history))
    @rule(data=st.data())
    def retry_a_recent_request(self, data: st.DataObject) -> None:
        request, first = data.draw(st.sampled_from(self.history[-10:]))
        assert self.apply([request])[0] == first  # answered again, not applied again

    @rule()
    def reopen(self) -> None:
        self.engine.close()
        self.engine = Engine(self.dir / "g", NAMESPACE)
        assert self.engine.applied_index == self.position

    @invariant()
    def index_counts_match_the_model(self) -> None:
        stats = self.engine.stats()
        live = sum(1 for r in self.model.values() if r.live)
        dead = sum(1 for r in self.model.values() if not r.live and r.generation > 0)
        assert (stats.records, stats.tombstones) == (live, dead)


EngineVersusDict.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None
)
test_engine_versus_dict = EngineVersusDict.TestCase
