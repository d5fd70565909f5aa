"""The exception classes, as `client.exception.<Name>`, like the official `aerospike.exception`.

They are the classes of `raftstore.errors` (one table of result codes), re-exported: the
class a server code maps to here is the class `raftstore.errors.by_code` gives. Every error
has `.code`, `.msg` and `.in_doubt` (and `.key`, `.bin`), and `args == (code, msg, in_doubt)`.
`AerospikeError` is the base class under its official name. The tree:

    AerospikeError (= RaftstoreError)
     +-- ClientError: raised by the SDK itself (ParamError -2, ConnectionError -10, ...)
     +-- ServerError: the server refused the request (InvalidRequest 4, NotLeader 901, ...)
     +-- RecordError: about one record (RecordNotFound 2, RecordGenerationError 3, ...)
     +-- TimeoutError 9

`in_doubt=True` on an error from a write means the write may or may not have been applied.
"""

from __future__ import annotations

from raftstore import errors
from raftstore.errors import ClientError, RaftstoreError, RecordError, ServerError

AerospikeError = RaftstoreError

ParamError: type[RaftstoreError] = errors.ParamError
ConnectionError: type[RaftstoreError] = errors.ConnectionError
MaxRetriesExceeded: type[RaftstoreError] = errors.MaxRetriesExceeded
NoResponse: type[RaftstoreError] = errors.NoResponse
TransactionFailed: type[RaftstoreError] = errors.TransactionFailed
TransactionAlreadyCommitted: type[RaftstoreError] = errors.TransactionAlreadyCommitted
TransactionAlreadyAborted: type[RaftstoreError] = errors.TransactionAlreadyAborted
RecordNotFound: type[RaftstoreError] = errors.RecordNotFound
RecordGenerationError: type[RaftstoreError] = errors.RecordGenerationError
InvalidRequest: type[RaftstoreError] = errors.InvalidRequest
RecordExistsError: type[RaftstoreError] = errors.RecordExistsError
BinExistsError: type[RaftstoreError] = errors.BinExistsError
ClusterChangeError: type[RaftstoreError] = errors.ClusterChangeError
ServerFull: type[RaftstoreError] = errors.ServerFull
TimeoutError: type[RaftstoreError] = errors.TimeoutError
AlwaysForbidden: type[RaftstoreError] = errors.AlwaysForbidden
PartitionUnavailable: type[RaftstoreError] = errors.PartitionUnavailable
BinIncompatibleType: type[RaftstoreError] = errors.BinIncompatibleType
RecordTooBig: type[RaftstoreError] = errors.RecordTooBig
RecordBusy: type[RaftstoreError] = errors.RecordBusy
UnsupportedFeature: type[RaftstoreError] = errors.UnsupportedFeature
BinNotFound: type[RaftstoreError] = errors.BinNotFound
DeviceOverload: type[RaftstoreError] = errors.DeviceOverload
RecordKeyMismatch: type[RaftstoreError] = errors.RecordKeyMismatch
NamespaceNotFound: type[RaftstoreError] = errors.NamespaceNotFound
BinNameError: type[RaftstoreError] = errors.BinNameError
ForbiddenError: type[RaftstoreError] = errors.ForbiddenError
ElementNotFoundError: type[RaftstoreError] = errors.ElementNotFoundError
ElementExistsError: type[RaftstoreError] = errors.ElementExistsError
OpNotApplicable: type[RaftstoreError] = errors.OpNotApplicable
TxnBlocked: type[RaftstoreError] = errors.TxnBlocked
TxnVersionMismatch: type[RaftstoreError] = errors.TxnVersionMismatch
TxnExpired: type[RaftstoreError] = errors.TxnExpired
TxnTooManyWrites: type[RaftstoreError] = errors.TxnTooManyWrites
TxnCommitted: type[RaftstoreError] = errors.TxnCommitted
TxnAborted: type[RaftstoreError] = errors.TxnAborted
TxnAlreadyLocked: type[RaftstoreError] = errors.TxnAlreadyLocked
BatchMaxRequest: type[RaftstoreError] = errors.BatchMaxRequest
InvalidGeoJSON: type[RaftstoreError] = errors.InvalidGeoJSON
NotLeader: type[RaftstoreError] = errors.NotLeader
RecordCorrupt: type[RaftstoreError] = errors.RecordCorrupt
SessionExpired: type[RaftstoreError] = errors.SessionExpired
ProtocolError: type[RaftstoreError] = errors.ProtocolError
SetLimitError: type[RaftstoreError] = errors.SetLimitError

__all__ = [
    "AerospikeError",
    "AlwaysForbidden",
    "BatchMaxRequest",
    "BinExistsError",
    "BinIncompatibleType",
    "BinNameError",
    "BinNotFound",
    "ClientError",
    "ClusterChangeError",
    "ConnectionError",
    "DeviceOverload",
    "ElementExistsError",
    "ElementNotFoundError",
    "ForbiddenError",
    "InvalidGeoJSON",
    "InvalidRequest",
    "MaxRetriesExceeded",
    "NamespaceNotFound",
    "NoResponse",
    "NotLeader",
    "OpNotApplicable",
    "ParamError",
    "PartitionUnavailable",
    "ProtocolError",
    "RaftstoreError",
    "RecordBusy",
    "RecordCorrupt",
    "RecordError",
    "RecordExistsError",
    "RecordGenerationError",
    "RecordKeyMismatch",
    "RecordNotFound",
    "RecordTooBig",
    "ServerError",
    "ServerFull",
    "SessionExpired",
    "SetLimitError",
    "TimeoutError",
    "TransactionAlreadyAborted",
    "TransactionAlreadyCommitted",
    "TransactionFailed",
    "TxnAborted",
    "TxnAlreadyLocked",
    "TxnBlocked",
    "TxnCommitted",
    "TxnExpired",
    "TxnTooManyWrites",
    "TxnVersionMismatch",
    "UnsupportedFeature",
]


def __getattr__(name: str) -> type[RaftstoreError]:
    """Classes of result codes added to the table after this list was written."""
    try:
        return getattr(errors, name)  # type: ignore[no-any-return]
    except AttributeError:
        raise AttributeError(f"module 'client.exception' has no attribute {name!r}") from None
