"""The SDK's transaction bookkeeping without a server: where a commit is sent."""

from __future__ import annotations

from client.key_tuples import KeyRef, parse_key
from client.txn import Transaction
from raftstore import keys
from raftstore import ops as op
from raftstore.policy import DEFAULT_WRITE_POLICY

GROUPS = 4


def key_in_group(group: int, start: int = 0) -> KeyRef:
    """The first key `("test", "route", n)`, n >= start, whose partition is in `group`."""
    number = start
    while True:
        ref = parse_key(("test", "route", number))
        if keys.partition_id(ref.digest) % GROUPS == group:
            return ref
        number += 1


def transaction(read: KeyRef, *written: KeyRef) -> Transaction:
    txn = Transaction()
    txn.enter(read)  # the first key: its group is the home group
    txn.remember(read.digest, None)
    for ref in written:
        txn.enter(ref)
        txn.buffer(ref, (op.write("n", 1),), DEFAULT_WRITE_POLICY, send_key=False)
    return txn


def test_the_commit_goes_to_the_first_written_key_outside_the_home_group() -> None:
    home, same, other, third = (
        key_in_group(1),
        key_in_group(1, 1000),
        key_in_group(2),
        key_in_group(3),
    )
    assert same.digest != home.digest
    txn = transaction(home, home, same, other, third)
    assert txn.coordinator_key(GROUPS) == other


def test_the_commit_goes_home_when_every_write_is_there_or_without_a_map() -> None:
    home, same, other = key_in_group(1), key_in_group(1, 1000), key_in_group(2)
    assert transaction(home, home, same).coordinator_key(GROUPS) == home
    assert transaction(home).coordinator_key(GROUPS) == home  # read-only
    # Only written keys count: a group the transaction only reads is never the coordinator's.
    txn = transaction(home, home)
    txn.enter(other)
    txn.remember(other.digest, None)
    assert txn.coordinator_key(GROUPS) == home
    assert transaction(home, other).coordinator_key(None) == home  # no partition map yet
