"""The checker's long runs: the issue's full-size command for every workload, every fault.

    python -m pytest -m long tests/test_runner_long.py

Not run by default (`-m 'not long'` in pytest's options): each takes a few minutes. Each is
`jepsen-like test --workload W --nemesis all --nodes 5 --concurrency 10 --time-limit 60
--rate 200`, which must end valid and leave no process or namespace behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_runner import assert_clean, jepsen_like, netns_list

LONG_RUN_TIMEOUT_S = 600


@pytest.mark.long
@pytest.mark.parametrize("workload", ["register", "set", "bank", "list-append"])
def test_a_full_size_run_under_every_fault_is_valid(tmp_path: Path, workload: str) -> None:
    store = tmp_path / "store"
    before = netns_list()
    done = jepsen_like(
        "test", "--workload", workload, "--nemesis", "all", "--nodes", "5",
        "--concurrency", "10", "--time-limit", "60", "--rate", "200", "--seed", "42",
        "--store", str(store),
        timeout_s=LONG_RUN_TIMEOUT_S,
    )  # fmt: skip
    assert_clean(store, done, before)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("valid: ")
