"""The node's config: good configs load, every bad one is refused in one line naming it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from server.config import ConfigError, load, parse

ROOT = Path(__file__).resolve().parent.parent
GOOD = """
[node]
id = "n1"
data-dir = "d1"
secret = "0123456789abcdef0123"

[[cluster.nodes]]
id = "n1"
listen = "127.0.0.1:3000"
raft-host = "127.0.0.1"
raft-port-base = 4000

[[cluster.nodes]]
id = "n2"
listen = "127.0.0.1:3001"
raft-host = "127.0.0.1"
raft-port-base = 4100

[[namespaces]]
name = "test"
replication-factor = 2
partition-groups = 3
default-ttl = 60
"""


def test_a_good_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(GOOD, encoding="utf-8")
    config = load(path)
    assert config.node_id == "n1" and config.data_dir == tmp_path / "d1"
    assert config.me.raft_address(2) == "127.0.0.1:4002"
    namespace = config.namespace("test")
    assert namespace is not None and namespace.default_ttl_s == 60
    placements = config.placements()
    assert [p.replicas for p in placements] == [("n1", "n2"), ("n2", "n1"), ("n1", "n2")]
    assert [p.index for p in placements] == [0, 1, 2]


BAD = {
    "unknown option": ("default-ttl = 60", "default-tll = 60", "default-tll"),
    "rf over nodes": ("replication-factor = 2", "replication-factor = 5", "replication-factor"),
    "bad type": ("partition-groups = 3", 'partition-groups = "3"', "partition-groups"),
    "ttl too long": ("default-ttl = 60", "default-ttl = 999999999", "default-ttl"),
    "short secret": ('secret = "0123456789abcdef0123"', 'secret = "x"', "secret"),
    "unknown node": ('id = "n1"\ndata-dir', 'id = "n9"\ndata-dir', "n9"),
    "bad listen": ('listen = "127.0.0.1:3001"', 'listen = "nowhere"', "listen"),
    "sc off": ("default-ttl = 60", "default-ttl = 60\nstrong-consistency = false", "strong"),
    "too many groups": ("partition-groups = 3", "partition-groups = 4097", "partition-groups"),
}


@pytest.mark.parametrize(("old", "new", "named"), BAD.values(), ids=BAD.keys())
def test_a_bad_config_is_refused_naming_the_option(old: str, new: str, named: str) -> None:
    assert old in GOOD
    with pytest.raises(ConfigError) as caught:
        parse(tomllib.loads(GOOD.replace(old, new, 1)), base=Path("."))
    message = str(caught.value)
    assert named in message and "\n" not in message


def test_the_server_command_refuses_a_bad_config_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(GOOD.replace("replication-factor = 2", "replication-factor = 0"), "utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "server", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "replication-factor" in lines[0], result.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[node\n", "utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "server", "--config", str(broken)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "not valid TOML" in result.stderr
