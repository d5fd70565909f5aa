"""`jepsen-like test` with the transactional workloads on real clusters (subprocesses of the
command, each well under a minute and a half).

- bank under kill: 3 nodes, 20 s of load; the accounts are set up before the workers start; the
  run ends valid, with ok transfers and reads, and a final read after the heal that holds
  the whole total. `jepsen-like check --model bank` on its history agrees.
- list-append without faults: 3 nodes, 12 s of load; valid, with ok transactions whose reads saw
  appends; `jepsen-like check --model list-append` agrees.

These need the SDK's transactions (`client.transaction`, issue 4) and the server's
coordinator; until both are in, they fail (the run crashes or its setup does). A run takes
about a minute: under a kill, a transaction can wait for its deadline or its coordinator's
recovery, and the runner waits for its workers after the time limit (up to 30 s), then
heals and reads; hence a harder stop than the register runs'.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_runner import assert_jepsen_fields, last_read_after_heal, recheck, valid_run

BANK_ACCOUNTS = 8
BANK_TOTAL = 800
TXN_RUN_TIMEOUT_S = 240  # a hard stop for a run that should take about a minute


def test_a_bank_run_under_kill_is_valid(tmp_path: Path) -> None:
    directory, history = valid_run(
        tmp_path / "store",
        "--workload", "bank", "--nemesis", "kill", "--nodes", "3",
        "--concurrency", "4", "--time-limit", "20", "--rate", "40", "--seed", "17",
        "--nemesis-interval", "2,4",
        timeout_s=TXN_RUN_TIMEOUT_S,
    )  # fmt: skip
    assert directory.parent.name == "bank-kill"
    assert_jepsen_fields(history)
    faults = [op.f for op in history.nemesis_ops]
    assert "start-kill" in faults and faults[-1] == "heal"
    outcomes = {(operation.f, operation.type) for operation in history.operations}
    assert {("transfer", "ok"), ("read", "ok")} <= outcomes
    final_read = last_read_after_heal(history)
    balances = {int(account): amount for account, amount in final_read.value.items()}
    assert set(balances) == set(range(BANK_ACCOUNTS)) and sum(balances.values()) == BANK_TOTAL
    results = json.loads((directory / "results.json").read_text(encoding="utf-8"))
    assert results["verdict"] == "valid" and results["seed"] == 17
    bank = results["checker"]["details"]["bank"]
    assert bank["valid"] is True and bank["details"]["total"] == BANK_TOTAL
    again = recheck(directory, "bank")
    assert again["valid"] is True


def test_a_list_append_run_is_valid(tmp_path: Path) -> None:
    directory, history = valid_run(
        tmp_path / "store",
        "--workload", "list-append", "--nemesis", "none", "--nodes", "3",
        "--concurrency", "4", "--time-limit", "12", "--rate", "50", "--seed", "19",
        timeout_s=TXN_RUN_TIMEOUT_S,
    )  # fmt: skip
    assert directory.parent.name == "list-append-none"
    assert_jepsen_fields(history)
    committed = [operation for operation in history.operations if operation.type == "ok"]
    assert len(committed) > 50
    assert any(f == "r" and value for op in committed for f, _, value in op.value)
    results = json.loads((directory / "results.json").read_text(encoding="utf-8"))
    elle = results["checker"]["details"]["list-append"]
    assert elle["valid"] is True and elle["details"]["transactions"] >= len(committed)
    again = recheck(directory, "list-append")
    assert again["valid"] is True
