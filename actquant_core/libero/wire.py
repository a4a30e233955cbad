"""Wire format between the policy process and the LIBERO environment server (numpy + stdlib only).

The environment server runs in the LIBERO venv (robosuite 1.4, mujoco 3), the policy in ours; they talk
over one local stream socket (Unix domain socket or loopback TCP).  Each message is one frame::

    offset  size  field
    0       4     magic b"AQLB"
    4       2     protocol version, uint16 big-endian (PROTOCOL_VERSION)
    6       2     reserved, 0
    8       4     header length H in bytes, uint32 big-endian (1 <= H <= max_header)
    12      8     payload length P in bytes, uint64 big-endian (0 <= P <= max_payload)
    20      H     header: UTF-8 JSON object
    20+H    P     payload: the raw bytes of the arrays, back to back

The header holds ``"type"`` (the message type, a non-empty string), ``"fields"`` (a JSON object of plain
values) and ``"arrays"``: a list of ``{"name", "dtype", "shape", "offset", "nbytes"}``, one per array, in
payload order without gaps, each C-contiguous in little-endian byte order (``dtype`` one of
:data:`ARRAY_DTYPES`).  Every violation -- bad magic, other version, truncated frame, oversized header or
payload, malformed JSON, array entries that do not tile the payload -- raises :class:`ProtocolError` whose
message names the broken rule and the received value.

Messages (request -> reply; any request may be answered with ``error`` instead, fields ``message``,
``kind``):

- ``hello`` {version} -> ``hello`` {version, libero_version, suites}
- ``tasks`` {suite} -> ``tasks`` {tasks: [{index, name, language, n_init_states}]}
- ``reset`` {suite, task, init_index, seed, resolution} -> ``obs`` (see below)
- ``step`` {} + array ``actions`` [k, 7] float64 -> ``obs``: the k actions are executed in order, stopping
  early when the episode reports done; ``fields.steps`` is the number executed
- ``close`` {} -> ``bye`` (the server exits)

An ``obs`` reply has fields {done, success, reward, steps, language} and arrays ``agentview_image``,
``wrist_image`` (uint8 [R, R, 3] as rendered, i.e. upside down), ``eef_pos`` [3], ``eef_quat`` [4] (x, y,
z, w), ``gripper_qpos`` [2] (float64).
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
MAGIC = b"AQLB"
_PREFIX = struct.Struct(">4sHHIQ")
PREFIX_SIZE = _PREFIX.size  # 20
DEFAULT_MAX_HEADER = 1 << 20  # 1 MiB of JSON
DEFAULT_MAX_PAYLOAD = 256 << 20  # 256 MiB of arrays
#: dtypes allowed on the wire (numpy names, little-endian when multi-byte).
ARRAY_DTYPES = ("uint8", "int8", "int32", "int64", "float32", "float64", "bool")

# message types
MSG_HELLO = "hello"
MSG_TASKS = "tasks"
MSG_RESET = "reset"
MSG_STEP = "step"
MSG_OBS = "obs"
MSG_CLOSE = "close"
MSG_BYE = "bye"
MSG_ERROR = "error"

# array names of an obs reply / a step request
OBS_AGENTVIEW = "agentview_image"
OBS_WRIST = "wrist_image"
OBS_EEF_POS = "eef_pos"
OBS_EEF_QUAT = "eef_quat"
OBS_GRIPPER_QPOS = "gripper_qpos"
OBS_ARRAYS = (OBS_AGENTVIEW, OBS_WRIST, OBS_EEF_POS, OBS_EEF_QUAT, OBS_GRIPPER_QPOS)
STEP_ACTIONS = "actions"


class ProtocolError(ValueError):
    """A frame that breaks the wire format (the message says which rule and what was received)."""


class PeerClosedError(ConnectionError):
    """The other side closed the connection (cleanly between frames, or in the middle of one)."""


@dataclass(frozen=True)
class Message:
    """One decoded frame.

    Attributes:
        type: message type (``hello``, ``reset``, ``obs``, ...).
        fields: JSON-able values.
        arrays: name -> numpy array (read-only views into the received payload when decoded).
    """

    type: str
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.type, str) or not self.type:
            raise ProtocolError(f"message type must be a non-empty string, got {self.type!r}")
        if not isinstance(self.fields, dict):
            raise ProtocolError(f"message fields must be a JSON object, got {type(self.fields).__name__}")
        if not isinstance(self.arrays, dict):
            raise ProtocolError(f"message arrays must be a dict, got {type(self.arrays).__name__}")

    def array(self, name: str) -> np.ndarray:
        """The named array; ProtocolError naming the message type and the arrays present when missing."""
        try:
            return self.arrays[name]
        except KeyError:
            raise ProtocolError(f"{self.type!r} message has no array {name!r} (has {sorted(self.arrays)})") from None


def _wire_dtype(a: np.ndarray, name: str) -> np.dtype:
    dt = np.dtype(a.dtype)
    if dt.name not in ARRAY_DTYPES:
        raise ProtocolError(f"array {name!r}: dtype {dt} cannot be sent; allowed {ARRAY_DTYPES}")
    return dt.newbyteorder("<") if dt.itemsize > 1 else dt


def encode_message(msg: Message) -> bytes:
    """Message -> one frame (prefix + JSON header + payload)."""
    entries, chunks, offset = [], [], 0
    for name, value in msg.arrays.items():
        a = np.asarray(value)
        dt = _wire_dtype(a, name)
        raw = np.ascontiguousarray(a, dtype=dt).tobytes()
        entries.append({"name": name, "dtype": dt.name, "shape": list(a.shape), "offset": offset, "nbytes": len(raw)})
        chunks.append(raw)
        offset += len(raw)
    try:
        header = json.dumps({"type": msg.type, "fields": msg.fields, "arrays": entries},
                            separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"{msg.type!r} message fields are not JSON-serialisable: {e}") from e
    return _PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, len(header), offset) + header + b"".join(chunks)


def decode_prefix(prefix: bytes, max_header: int = DEFAULT_MAX_HEADER,
                  max_payload: int = DEFAULT_MAX_PAYLOAD) -> tuple[int, int]:
    """The 20-byte prefix -> (header length, payload length), validated."""
    if len(prefix) != PREFIX_SIZE:
        raise ProtocolError(f"truncated frame: prefix has {len(prefix)} bytes, expected {PREFIX_SIZE}")
    magic, version, reserved, hlen, plen = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}, expected {MAGIC!r} (not an actquant LIBERO frame)")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version} is not supported; this side speaks version {PROTOCOL_VERSION} "
                            "(run the env server and the policy side from the same actquant checkout)")
    if reserved != 0:
        raise ProtocolError(f"reserved prefix field must be 0, got {reserved}")
    if not 1 <= hlen <= max_header:
        raise ProtocolError(f"header length {hlen} out of range [1, {max_header}]")
    if plen > max_payload:
        raise ProtocolError(f"payload length {plen} exceeds the limit {max_payload}")
    return hlen, plen


def decode_body(header: bytes, payload: bytes) -> Message:
    """JSON header + payload -> Message (arrays are read-only views into ``payload``)."""
    try:
        h = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"header is not UTF-8 JSON: {e}") from e
    if not isinstance(h, dict):
        raise ProtocolError(f"header must be a JSON object, got {type(h).__name__}")
    mtype, fields, entries = h.get("type"), h.get("fields", {}), h.get("arrays", [])
    if not isinstance(mtype, str) or not mtype:
        raise ProtocolError(f"header 'type' must be a non-empty string, got {mtype!r}")
    if not isinstance(fields, dict):
        raise ProtocolError(f"header 'fields' must be an object, got {type(fields).__name__}")
    if not isinstance(entries, list):
        raise ProtocolError(f"header 'arrays' must be a list, got {type(entries).__name__}")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for e in entries:
        arrays.update([_decode_array(e, payload, offset)])
        offset += e["nbytes"]
    if offset != len(payload):
        raise ProtocolError(f"arrays cover {offset} payload bytes but the payload has {len(payload)}")
    return Message(mtype, fields, arrays)


def _decode_array(e: Any, payload: bytes, offset: int) -> tuple[str, np.ndarray]:
    if not isinstance(e, dict) or not {"name", "dtype", "shape", "offset", "nbytes"} <= set(e):
        raise ProtocolError(f"array entry must have name, dtype, shape, offset, nbytes; got {e!r}")
    name, dtype, shape = e["name"], e["dtype"], e["shape"]
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"array name must be a non-empty string, got {name!r}")
    if dtype not in ARRAY_DTYPES:
        raise ProtocolError(f"array {name!r}: dtype {dtype!r} not allowed; allowed {ARRAY_DTYPES}")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ProtocolError(f"array {name!r}: shape must be a list of non-negative ints, got {shape!r}")
    if e["offset"] != offset:
        raise ProtocolError(f"array {name!r}: offset {e['offset']!r}, expected {offset} (arrays are back to back)")
    dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)
    want = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if e["nbytes"] != want:
        raise ProtocolError(f"array {name!r}: nbytes {e['nbytes']!r} != {want} for {dtype} {shape}")
    if offset + want > len(payload):
        raise ProtocolError(f"array {name!r}: bytes [{offset}, {offset + want}) run past the payload ({len(payload)})")
    a = np.frombuffer(payload, dtype=dt, count=want // dt.itemsize, offset=offset).reshape(shape)
    return name, a


def decode_message(frame: bytes, max_header: int = DEFAULT_MAX_HEADER, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Message:
    """One complete frame (bytes) -> Message; ProtocolError on truncation or trailing bytes."""
    hlen, plen = decode_prefix(frame[:PREFIX_SIZE], max_header, max_payload)
    total = PREFIX_SIZE + hlen + plen
    if len(frame) < total:
        raise ProtocolError(f"truncated frame: {len(frame)} bytes, the prefix announces {total}")
    if len(frame) > total:
        raise ProtocolError(f"{len(frame) - total} trailing bytes after a {total}-byte frame")
    return decode_body(frame[PREFIX_SIZE : PREFIX_SIZE + hlen], frame[PREFIX_SIZE + hlen : total])


def _recv_exact(sock: socket.socket, n: int, what: str, allow_eof: bool = False) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:], n - got)
        except ConnectionResetError as e:  # the peer closed with unread data of ours in its buffer
            raise PeerClosedError(f"connection reset by the peer ({what}: {got} of {n} bytes)") from e
        if k == 0:
            if got == 0 and allow_eof:
                return None
            raise PeerClosedError(f"connection closed in the middle of a frame ({what}: {got} of {n} bytes)")
        got += k
    return bytes(buf)


def send_message(sock: socket.socket, msg: Message) -> None:
    """Encode and send one frame."""
    sock.sendall(encode_message(msg))


def recv_message(sock: socket.socket, max_header: int = DEFAULT_MAX_HEADER,
                 max_payload: int = DEFAULT_MAX_PAYLOAD) -> Message:
    """Receive one frame.  PeerClosedError when the peer closed before (or during) a frame."""
    prefix = _recv_exact(sock, PREFIX_SIZE, "prefix", allow_eof=True)
    if prefix is None:
        raise PeerClosedError("connection closed by the peer")
    hlen, plen = decode_prefix(prefix, max_header, max_payload)
    header = _recv_exact(sock, hlen, "header")
    payload = _recv_exact(sock, plen, "payload") if plen else b""
    assert header is not None and payload is not None
    return decode_body(header, payload)


def error_message(exc: BaseException) -> Message:
    """An ``error`` reply for an exception (its class name as ``kind``)."""
    return Message(MSG_ERROR, {"message": str(exc), "kind": type(exc).__name__})
