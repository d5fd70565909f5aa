"""One table of result codes, and the exception classes generated from it.

Rules:
- Every code that crosses a boundary (state machine -> server -> wire -> SDK) is a row of
  `RESULT_CODES`. Numbers are Aerospike's where Aerospike has one; raftstore's own codes live
  in the 900s, out of Aerospike's way.
- Each row says whether a failure with that code is *definite* (the operation did not happen
  and had no effect) or *indeterminate* (it may have happened). A client turns an
  indeterminate failure of a write into an error with `in_doubt=True`, never into "failed".
- The exception tree mirrors the official Aerospike Python client:

      RaftstoreError (code, msg, in_doubt)
       +-- ClientError        codes < 0, raised by the SDK itself
       |    +-- ParamError, ConnectionError, MaxRetriesExceeded, NoResponse, ...
       +-- ServerError        codes >= 1 that are not about one record
       |    +-- InvalidRequest, PartitionUnavailable, NamespaceNotFound, ...
       +-- RecordError        codes about one record (has `.key` and `.bin`)
       |    +-- RecordNotFound, RecordGenerationError, RecordExistsError, ...
       +-- TimeoutError       code 9

  `errors.RecordNotFound` and `errors.by_code(2)` are the same class.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class ResultCode(enum.IntEnum):
    # Client-side codes (the SDK raises these itself).
    CLIENT_ERROR = -1
    PARAM_ERROR = -2
    CONNECTION_ERROR = -10
    MAX_RETRIES_EXCEEDED = -12
    NO_RESPONSE = -15
    TXN_FAILED = -17
    TXN_ALREADY_COMMITTED = -18
    TXN_ALREADY_ABORTED = -19
    # Server codes, Aerospike's numbers.
    OK = 0
    SERVER_ERROR = 1
    RECORD_NOT_FOUND = 2
    GENERATION_ERROR = 3
    PARAMETER_ERROR = 4
    RECORD_EXISTS = 5
    BIN_EXISTS = 6
    CLUSTER_CHANGE = 7
    SERVER_FULL = 8
    TIMEOUT = 9
    ALWAYS_FORBIDDEN = 10
    PARTITION_UNAVAILABLE = 11
    BIN_INCOMPATIBLE_TYPE = 12
    RECORD_TOO_BIG = 13
    KEY_BUSY = 14
    UNSUPPORTED_FEATURE = 16
    BIN_NOT_FOUND = 17
    DEVICE_OVERLOAD = 18
    KEY_MISMATCH = 19
    NAMESPACE_NOT_FOUND = 20
    BIN_NAME_TOO_LONG = 21
    FORBIDDEN = 22
    ELEMENT_NOT_FOUND = 23
    ELEMENT_EXISTS = 24
    OP_NOT_APPLICABLE = 26
    MRT_BLOCKED = 120
    MRT_VERSION_MISMATCH = 121
    MRT_EXPIRED = 122
    MRT_TOO_MANY_WRITES = 123
    MRT_COMMITTED = 124
    MRT_ABORTED = 125
    MRT_ALREADY_LOCKED = 126
    BATCH_MAX_REQUESTS = 151
    INVALID_GEOJSON = 160
    # raftstore's own codes.
    NOT_LEADER = 901
    RECORD_CORRUPT = 902
    SESSION_EXPIRED = 903
    PROTOCOL_ERROR = 904
    SET_LIMIT = 905


@dataclass(frozen=True, slots=True)
class CodeInfo:
    code: ResultCode
    class_name: str
    parent: str
    definite: bool
    meaning: str


def _row(code: ResultCode, class_name: str, parent: str, definite: bool, meaning: str) -> CodeInfo:
    return CodeInfo(code, class_name, parent, definite, meaning)


_C, _S, _R = "ClientError", "ServerError", "RecordError"

RESULT_CODES: tuple[CodeInfo, ...] = (
    _row(ResultCode.CLIENT_ERROR, "ClientError", "RaftstoreError", False, "client-side failure"),
    _row(ResultCode.PARAM_ERROR, "ParamError", _C, True, "invalid argument given to the SDK"),
    _row(ResultCode.CONNECTION_ERROR, "ConnectionError", _C, False, "connection lost or refused"),
    _row(ResultCode.MAX_RETRIES_EXCEEDED, "MaxRetriesExceeded", _C, False, "retries exhausted"),
    _row(ResultCode.NO_RESPONSE, "NoResponse", _C, False, "request sent, no reply received"),
    _row(ResultCode.TXN_FAILED, "TransactionFailed", _C, True, "transaction failed"),
    _row(
        ResultCode.TXN_ALREADY_COMMITTED,
        "TransactionAlreadyCommitted",
        _C,
        True,
        "transaction already committed",
    ),
    _row(
        ResultCode.TXN_ALREADY_ABORTED,
        "TransactionAlreadyAborted",
        _C,
        True,
        "transaction already aborted",
    ),
    _row(ResultCode.OK, "Ok", "RaftstoreError", True, "success"),
    _row(
        ResultCode.SERVER_ERROR, "ServerError", "RaftstoreError", False, "unexpected server error"
    ),
    _row(ResultCode.RECORD_NOT_FOUND, "RecordNotFound", _R, True, "record does not exist"),
    _row(ResultCode.GENERATION_ERROR, "RecordGenerationError", _R, True, "generation mismatch"),
    _row(ResultCode.PARAMETER_ERROR, "InvalidRequest", _S, True, "bad parameter or request"),
    _row(ResultCode.RECORD_EXISTS, "RecordExistsError", _R, True, "record already exists"),
    _row(ResultCode.BIN_EXISTS, "BinExistsError", _R, True, "bin already exists"),
    _row(ResultCode.CLUSTER_CHANGE, "ClusterChangeError", _S, True, "cluster changed"),
    _row(ResultCode.SERVER_FULL, "ServerFull", _S, True, "device store is full"),
    _row(ResultCode.TIMEOUT, "TimeoutError", "RaftstoreError", False, "timed out"),
    _row(ResultCode.ALWAYS_FORBIDDEN, "AlwaysForbidden", _S, True, "operation never allowed"),
    _row(
        ResultCode.PARTITION_UNAVAILABLE,
        "PartitionUnavailable",
        _S,
        True,
        "no leader for the partition",
    ),
    _row(ResultCode.BIN_INCOMPATIBLE_TYPE, "BinIncompatibleType", _R, True, "bin has another type"),
    _row(ResultCode.RECORD_TOO_BIG, "RecordTooBig", _R, True, "record exceeds max-record-size"),
    _row(ResultCode.KEY_BUSY, "RecordBusy", _R, True, "record is busy"),
    _row(ResultCode.UNSUPPORTED_FEATURE, "UnsupportedFeature", _S, True, "not supported"),
    _row(ResultCode.BIN_NOT_FOUND, "BinNotFound", _R, True, "bin does not exist"),
    _row(ResultCode.DEVICE_OVERLOAD, "DeviceOverload", _S, True, "device cannot keep up"),
    _row(ResultCode.KEY_MISMATCH, "RecordKeyMismatch", _R, True, "stored key differs"),
    _row(ResultCode.NAMESPACE_NOT_FOUND, "NamespaceNotFound", _S, True, "no such namespace"),
    _row(ResultCode.BIN_NAME_TOO_LONG, "BinNameError", _R, True, "bin name over 15 bytes"),
    _row(ResultCode.FORBIDDEN, "ForbiddenError", _S, True, "not allowed now"),
    _row(ResultCode.ELEMENT_NOT_FOUND, "ElementNotFoundError", _S, True, "element not found"),
    _row(ResultCode.ELEMENT_EXISTS, "ElementExistsError", _S, True, "element already exists"),
    _row(ResultCode.OP_NOT_APPLICABLE, "OpNotApplicable", _S, True, "operation not applicable"),
    _row(ResultCode.MRT_BLOCKED, "TxnBlocked", _R, True, "record locked by a transaction"),
    _row(
        ResultCode.MRT_VERSION_MISMATCH,
        "TxnVersionMismatch",
        _R,
        True,
        "record changed since the transaction read it",
    ),
    _row(ResultCode.MRT_EXPIRED, "TxnExpired", _S, True, "transaction deadline passed"),
    _row(ResultCode.MRT_TOO_MANY_WRITES, "TxnTooManyWrites", _S, True, "too many writes"),
    _row(ResultCode.MRT_COMMITTED, "TxnCommitted", _S, True, "transaction already committed"),
    _row(ResultCode.MRT_ABORTED, "TxnAborted", _S, True, "transaction already aborted"),
    _row(ResultCode.MRT_ALREADY_LOCKED, "TxnAlreadyLocked", _R, True, "already locked"),
    _row(ResultCode.BATCH_MAX_REQUESTS, "BatchMaxRequest", _S, True, "batch too large"),
    _row(ResultCode.INVALID_GEOJSON, "InvalidGeoJSON", _S, True, "invalid GeoJSON"),
    _row(ResultCode.NOT_LEADER, "NotLeader", _S, True, "this node does not lead the partition"),
    _row(ResultCode.RECORD_CORRUPT, "RecordCorrupt", _R, True, "stored record failed its check"),
    _row(
        ResultCode.SESSION_EXPIRED,
        "SessionExpired",
        _S,
        False,
        "request older than the client's session window; outcome unknown",
    ),
    _row(ResultCode.PROTOCOL_ERROR, "ProtocolError", _S, True, "malformed frame"),
    _row(ResultCode.SET_LIMIT, "SetLimitError", _S, True, "too many sets in the namespace"),
)

_INFO_BY_CODE: dict[int, CodeInfo] = {row.code: row for row in RESULT_CODES}
assert len(_INFO_BY_CODE) == len(RESULT_CODES) == len(ResultCode), "one row per code"


def info(code: int) -> CodeInfo:
    """The table row of `code`; unknown codes read as a generic, indeterminate server error."""
    return _INFO_BY_CODE.get(code, _INFO_BY_CODE[ResultCode.SERVER_ERROR])


def is_definite(code: int) -> bool:
    return info(code).definite


class RaftstoreError(Exception):
    """Base of every raftstore error. `code` is a `ResultCode` number."""

    code: int = ResultCode.SERVER_ERROR

    def __init__(
        self,
        msg: str = "",
        *,
        code: int | None = None,
        in_doubt: bool = False,
        key: Any = None,
        bin: str | None = None,
    ) -> None:
        if code is not None:
            self.code = code
        self.msg = msg or info(self.code).meaning
        self.in_doubt = in_doubt
        self.key = key
        self.bin = bin
        super().__init__(self.code, self.msg, in_doubt)

    @property
    def definite(self) -> bool:
        return is_definite(self.code)

    def __str__(self) -> str:
        doubt = " (in doubt)" if self.in_doubt else ""
        return f"{type(self).__name__} [{self.code}]: {self.msg}{doubt}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.code, self.msg, self.in_doubt))


class ClientError(RaftstoreError):
    code = ResultCode.CLIENT_ERROR


class ServerError(RaftstoreError):
    code = ResultCode.SERVER_ERROR


class RecordError(RaftstoreError):
    code = ResultCode.SERVER_ERROR


_CLASSES: dict[str, type[RaftstoreError]] = {
    "RaftstoreError": RaftstoreError,
    "ClientError": ClientError,
    "ServerError": ServerError,
    "RecordError": RecordError,
}
_CLASS_BY_CODE: dict[int, type[RaftstoreError]] = {}

for _info in RESULT_CODES:
    _cls = _CLASSES.get(_info.class_name)
    if _cls is None:
        _cls = type(_info.class_name, (_CLASSES[_info.parent],), {"code": _info.code})
        _cls.__module__ = __name__
        _CLASSES[_info.class_name] = _cls
        globals()[_info.class_name] = _cls
    _CLASS_BY_CODE[_info.code] = _cls


def by_code(code: int) -> type[RaftstoreError]:
    """The exception class for `code` (ServerError for codes this build does not know)."""
    return _CLASS_BY_CODE.get(code, ServerError)


def error(code: int, msg: str = "", *, in_doubt: bool = False) -> RaftstoreError:
    """An exception instance of the right class for `code`."""
    return by_code(code)(msg, code=code, in_doubt=in_doubt)


def _rebuild(code: int, msg: str, in_doubt: bool) -> RaftstoreError:
    return error(code, msg, in_doubt=in_doubt)


def __getattr__(name: str) -> type[RaftstoreError]:
    """Typed access for the generated classes (mypy sees this signature)."""
    try:
        return _CLASSES[name]
    except KeyError:
        raise AttributeError(name) from None
