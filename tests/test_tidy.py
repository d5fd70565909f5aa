"""The dependency direction of ARCHITECTURE.md, and pure cores free of I/O, as tests.

raftstore  <-  txn  <-  server
client     ->  only the light, I/O-free modules of raftstore
jepsen_like -> client (and the light modules), never server, txn or engine internals
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("raftstore", "txn", "server", "client", "jepsen_like")

# Modules the SDK and the checker may import: no lmdb, no pysyncobj, no threads of their own.
LIGHT_MODULES = frozenset(
    {
        "raftstore",
        "raftstore.clock",
        "raftstore.codec",
        "raftstore.command_codec",
        "raftstore.commands",
        "raftstore.config",
        "raftstore.errors",
        "raftstore.keys",
        "raftstore.limits",
        "raftstore.operations",
        "raftstore.operations_cdt",
        "raftstore.ops",
        "raftstore.policy",
        "raftstore.record",
        "raftstore.txn_commands",
        "raftstore.values",
        "raftstore.wire",
    }
)
# Pure cores: functions and state machines only; effects belong to the shells around them.
PURE_MODULES = frozenset(
    {
        "raftstore.clock",
        "raftstore.codec",
        "raftstore.index",
        "raftstore.keys",
        "raftstore.operations",
        "raftstore.operations_cdt",
        "raftstore.record",
        "raftstore.state_machine",
        "raftstore.txn_commands",
        "raftstore.txn_participant",
        "raftstore.values",
        "txn.coordinator",
    }
)
IO_MODULES = frozenset(
    {
        "asyncio",
        "lmdb",
        "os",
        "pysyncobj",
        "random",
        "selectors",
        "socket",
        "subprocess",
        "threading",
        "time",
    }
)
# pysyncobj stays behind one adapter module.
PYSYNCOBJ_ADAPTERS = frozenset({"raftstore.raft_log"})

ALLOWED_PROJECT_IMPORTS: dict[str, frozenset[str]] = {
    "raftstore": frozenset({"raftstore"}),
    "txn": frozenset({"raftstore", "txn"}),
    "server": frozenset({"raftstore", "txn", "server", "client"}),
    "client": frozenset({"raftstore", "client"}),
    "jepsen_like": frozenset({"raftstore", "client", "jepsen_like"}),
}


def module_files() -> list[tuple[str, Path]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found.append((name, path))
    return found


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from raftstore import keys` imports raftstore.keys.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


MODULES = module_files()


def test_the_packages_have_modules() -> None:
    assert {name.split(".")[0] for name, _ in MODULES} == set(PACKAGES)


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_dependency_direction(module: str, path: Path) -> None:
    package = module.split(".", maxsplit=1)[0]
    for imported in imported_modules(path):
        top = imported.split(".")[0]
        if top not in PACKAGES:
            continue
        assert top in ALLOWED_PROJECT_IMPORTS[package], f"{module} imports {imported}"
        if package in ("client", "jepsen_like") and top == "raftstore":
            parent = imported.rsplit(".", 1)[0]
            assert imported in LIGHT_MODULES or parent in LIGHT_MODULES - {"raftstore"}, (
                f"{module} imports the heavy module {imported}"
            )


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_pure_cores_and_light_modules_do_no_io(module: str, path: Path) -> None:
    if module not in PURE_MODULES | LIGHT_MODULES:
        return
    io = {name for name in imported_modules(path) if name.split(".")[0] in IO_MODULES}
    assert not io, f"{module} is a pure core but imports {sorted(io)}"


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_pysyncobj_stays_behind_its_adapter(module: str, path: Path) -> None:
    if module in PYSYNCOBJ_ADAPTERS:
        return
    users = {name for name in imported_modules(path) if name.split(".")[0] == "pysyncobj"}
    assert not users, f"{module} imports pysyncobj; only {sorted(PYSYNCOBJ_ADAPTERS)} may"


def test_the_tidy_check_catches_a_bad_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import threading\nfrom server import cli\n", encoding="utf-8")
    assert imported_modules(bad) == {"threading", "server", "server.cli"}
