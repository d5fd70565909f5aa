"""Calls from this node to the leaders of partition groups it does not lead.

A transaction's coordinator prepares, decides and resolves in groups led by other nodes, and
a read that meets a write intent asks the intent's home group for the transaction's state.
Both go through the ordinary client protocol (`client.Client.exchange` with `TxnStepMsg`):
the same routing, redirects and in-doubt rules as any client, no second protocol.

`Peer.step(namespace, group, command, txn_id, reply)` answers through `reply` exactly once,
on one of the peer's worker threads (calls block on the network, never a group's thread):
the leader's `Response` (its `value` carries the step's own result, see
`server.txn_service`), or None when the outcome is unknown (no answer in time, connection
lost, an in-doubt answer). A definite refusal (NOT_LEADER after the redirects ran out) is a
`Response` with that code: the coordinator's retry rules take it from there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import structlog

from client.api import Client
from client.policies import Policy
from raftstore import wire
from raftstore.errors import RaftstoreError, ResultCode, error, is_definite
from raftstore.txn_commands import TxnCommand

log = structlog.get_logger(__name__)

STEP_TIMEOUT_MS = 2000  # one step, redirects included; the coordinator retries a few times
WORKERS = 16

StepReply = Callable[[wire.Response | None], None]


class Peer:
    def __init__(self, seeds: Sequence[tuple[str, int]], *, timeout_ms: int = STEP_TIMEOUT_MS):
        self._client = Client({"hosts": list(seeds), "timeout_ms": timeout_ms})
        self._policy = Policy(
            total_timeout_ms=timeout_ms, socket_timeout_ms=timeout_ms, max_retries=0
        )
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="peer")
        self._connect_lock = threading.Lock()
        self._closed = False

    def step(
        self,
        namespace: str,
        group: int,
        command: TxnCommand | None,
        txn_id: int,
        reply: StepReply,
    ) -> None:
        message = wire.TxnStepMsg(namespace, group, command, txn_id)
        try:
            self._pool.submit(self._run, namespace, group, message, reply)
        except RuntimeError:  # shut down: the node is stopping
            reply(None)

    def _run(self, namespace: str, group: int, message: wire.TxnStepMsg, reply: StepReply) -> None:
        try:
            response = self._exchange(namespace, group, message)
        except Exception:
            log.exception("peer_step_failed", namespace=namespace, group=group)
            response = None
        reply(response)

    def _exchange(
        self, namespace: str, group: int, message: wire.TxnStepMsg
    ) -> wire.Response | None:
        try:
            self._connected()
        except RaftstoreError as exc:
            log.info("peer_unreachable", reason=exc.msg)
            return None
        # Partition `group` belongs to group `group` (partition p is in group p % groups).
        call = self._client.exchange(namespace, group, message, self._policy)
        failed = call.error
        if failed is not None:
            if failed.in_doubt or not is_definite(failed.code) or failed.code == ResultCode.TIMEOUT:
                return None
            return wire.Response(code=failed.code, message=failed.msg)
        return call.response

    def _connected(self) -> None:
        with self._connect_lock:
            if self._closed:
                raise error(ResultCode.CLIENT_ERROR, "peer closed")
            if not self._client.is_connected():
                self._client.connect()

    def close(self) -> None:
        with self._connect_lock:
            self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
