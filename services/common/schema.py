"""The message, the client frames and the cursor: one definition for the replicas, the history and the tools.

A stored or published message is ``{"v":1,"id","origin","room","author","text","ts","client_id"}``. Readers
ignore unknown fields and accept a higher ``v`` so a rolling upgrade never stalls the history queue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from services.common.ids import is_ulid, ulid_floor, ulid_timestamp

SCHEMA_VERSION = 1
DEFAULT_ROOM = "general"
MAX_CURSOR_IDS = 32
ROOM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_CLIENT_FIELDS = frozenset({"type", "text", "client_id"})
# Unicode category Cc (C0, DEL, C1: 65 code points; Unicode never changes this set) minus newline and tab. One regex
# search runs in C; a per-character unicodedata loop cost ~65 ns a character, ~260 us per 4,000-byte text.
_REFUSED_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class FrameError(Exception):
    """A refused client frame: ``code`` is one of the contract's error codes."""

    def __init__(self, code: str, detail: str, client_id: str | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.client_id = client_id


class InvalidMessage(ValueError):
    """A broker or store payload that is not a readable message."""


def json_object(body: bytes | str) -> dict[str, Any]:
    """``body`` parsed as a JSON object, or ``InvalidMessage`` saying why not."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidMessage("not a JSON object")
    return data


@dataclass(frozen=True, slots=True)
class ChatMessage:
    id: str
    origin: str
    room: str
    author: str | None
    text: str
    ts: int
    client_id: str | None = None

    def to_wire(self) -> bytes:
        body: dict[str, Any] = {
            "v": SCHEMA_VERSION, "id": self.id, "origin": self.origin, "room": self.room,
            "author": self.author, "text": self.text, "ts": self.ts,
        }
        if self.client_id is not None:
            body["client_id"] = self.client_id
        return orjson.dumps(body)

    def public_fields(self) -> dict[str, Any]:
        """The fields a client sees (no schema version)."""
        fields: dict[str, Any] = {
            "id": self.id, "origin": self.origin, "room": self.room, "author": self.author,
            "text": self.text, "ts": self.ts,
        }
        if self.client_id is not None:
            fields["client_id"] = self.client_id
        return fields

    def to_frame(self) -> str:
        """The `message` frame a client receives; built once per replica, shared by every client."""
        return message_frame_from_wire(self.to_wire())

    @classmethod
    def from_wire(cls, body: bytes | str) -> ChatMessage:
        return cls.from_dict(json_object(body))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatMessage:
        version = data.get("v", SCHEMA_VERSION)
        if not isinstance(version, int) or version < 1:
            raise InvalidMessage(f"bad version {version!r}")
        msg_id, room, text, ts = data.get("id"), data.get("room"), data.get("text"), data.get("ts")
        origin, author, client_id = data.get("origin", ""), data.get("author"), data.get("client_id")
        if not isinstance(msg_id, str) or not is_ulid(msg_id):
            raise InvalidMessage("bad id")
        if not isinstance(room, str) or not ROOM_RE.fullmatch(room):
            raise InvalidMessage("bad room")
        if not isinstance(text, str) or not isinstance(origin, str):
            raise InvalidMessage("bad text or origin")
        if not isinstance(ts, int) or isinstance(ts, bool):
            raise InvalidMessage("bad ts")
        if author is not None and not isinstance(author, str):
            raise InvalidMessage("bad author")
        if client_id is not None and not isinstance(client_id, str):
            raise InvalidMessage("bad client_id")
        return cls(id=msg_id, origin=origin, room=room, author=author, text=text, ts=ts, client_id=client_id)


def message_frame_from_wire(wire: bytes) -> str:
    """Turn the stored/broker form into the client frame by swapping ``"v":1`` for ``"type":"message"``.

    Both forms start with the same fields, so this is a slice, not a decode and re-encode.
    """
    prefix = b'{"v":1,'
    if wire.startswith(prefix):
        return '{"type":"message",' + wire[len(prefix):].decode()
    return orjson.dumps({"type": "message", **ChatMessage.from_wire(wire).public_fields()}).decode()


@dataclass(frozen=True, slots=True)
class SendRequest:
    text: str
    client_id: str | None


@dataclass(frozen=True, slots=True)
class TypingRequest:
    """``{"type": "typing"}``: the client's user is writing (presence, never stored)."""


TYPING = TypingRequest()


def parse_client_frame(raw: str, max_text_bytes: int) -> SendRequest | TypingRequest:
    """Validate one client text frame, a send or a typing event; raise FrameError with the contract's code."""
    data = _frame_object(raw)
    if data.get("type") == "typing":
        if len(data) > 1:
            raise FrameError("bad_frame", "a typing frame has no field but type")
        return TYPING
    return _send_request(data, max_text_bytes)


def parse_send_frame(raw: str, max_text_bytes: int) -> SendRequest:
    """Validate one client send frame; raise FrameError with the contract's code."""
    return _send_request(_frame_object(raw), max_text_bytes)


def _frame_object(raw: str) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "surrogate" in str(exc):
            raise FrameError("bad_text", "text is not valid Unicode (lone surrogate escape)") from None
        raise FrameError("bad_json", "frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise FrameError("bad_frame", "frame must be a JSON object")
    return data


def _send_request(data: dict[str, Any], max_text_bytes: int) -> SendRequest:
    client_id = data.get("client_id")
    if client_id is not None and (not isinstance(client_id, str) or not CLIENT_ID_RE.fullmatch(client_id)):
        raise FrameError("bad_frame", "client_id must match [A-Za-z0-9_.:-]{1,64}")
    unknown = set(data) - _CLIENT_FIELDS
    if unknown:
        raise FrameError("bad_frame", f"unknown field(s): {', '.join(sorted(unknown))[:200]}", client_id)
    if data.get("type", "send") != "send":
        raise FrameError("bad_frame", "type must be 'send' or 'typing'", client_id)
    text = data.get("text")
    if text is None:
        raise FrameError("bad_frame", "missing field: text", client_id)
    if not isinstance(text, str):
        raise FrameError("bad_frame", "text must be a string", client_id)
    return SendRequest(text=validate_text(text, max_text_bytes, client_id), client_id=client_id)


def validate_text(text: str, max_bytes: int, client_id: str | None = None) -> str:
    if not text.strip():
        raise FrameError("empty_text", "text is empty", client_id)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise FrameError("bad_text", "text is not valid UTF-8 (lone surrogate)", client_id) from None
    if size > max_bytes:
        raise FrameError("too_large", f"text is {size} bytes, the limit is {max_bytes}", client_id)
    if _REFUSED_CONTROLS.search(text) is not None:
        raise FrameError("bad_text", "control characters other than newline and tab are refused", client_id)
    return text


def valid_room(room: str) -> bool:
    return ROOM_RE.fullmatch(room) is not None


@dataclass(frozen=True, slots=True)
class Cursor:
    """What a client has seen: the newest id it holds from each of up to 32 origins."""

    ids: tuple[str, ...]

    @classmethod
    def parse(cls, raw: str) -> Cursor:
        ids = tuple(part.strip() for part in raw.split(",") if part.strip())
        if not ids or len(ids) > MAX_CURSOR_IDS or not all(is_ulid(i) for i in ids):
            raise FrameError("bad_after", f"after must be 1 to {MAX_CURSOR_IDS} comma-separated message ids")
        return cls(ids)

    @property
    def newest_ts(self) -> int:
        return max(ulid_timestamp(i) for i in self.ids)


class CursorFilter:
    """The contract's selection rule (section 3), given the origins of the cursor's ids.

    A message from an origin in the cursor is sent when its id is newer than that origin's id; a message from
    another origin when its timestamp is within the window before the cursor's newest timestamp, or later.
    """

    __slots__ = ("_by_origin", "_ts_floor", "lower_bound")

    def __init__(self, by_origin: dict[str, str], newest_ts: int, window_ms: int) -> None:
        self._by_origin = by_origin
        self._ts_floor = newest_ts - window_ms
        # Every message this filter may select sorts after this id, so history is read from here.
        floor = ulid_floor(self._ts_floor)
        self.lower_bound = min([floor, *by_origin.values()])

    def wants(self, message: ChatMessage) -> bool:
        seen = self._by_origin.get(message.origin)
        if seen is not None:
            return message.id > seen
        return message.ts > self._ts_floor
