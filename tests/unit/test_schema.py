from __future__ import annotations

import orjson
import pytest

from services.common.ids import UlidGenerator, ulid_floor
from services.common.schema import (
    ChatMessage,
    Cursor,
    CursorFilter,
    FrameError,
    InvalidMessage,
    message_frame_from_wire,
    parse_send_frame,
)

ids = UlidGenerator()


def message(origin: str = "AAAA", ts: int | None = None, **fields: object) -> ChatMessage:
    msg_id, minted = ids.mint()
    base = {"id": msg_id, "origin": origin, "room": "r", "author": None, "text": "t", "ts": ts or minted}
    return ChatMessage(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{", "bad_json"),
        ("[1]", "bad_frame"),
        ('{"text": 5}', "bad_frame"),
        ('{"client_id": "x"}', "bad_frame"),
        ('{"text": "hi", "extra": 1}', "bad_frame"),
        ('{"type": "join", "text": "hi"}', "bad_frame"),
        ('{"text": "hi", "client_id": "has space"}', "bad_frame"),
        ('{"text": "   \\n\\t "}', "empty_text"),
        ('{"text": "bell\\u0007"}', "bad_text"),
        ('{"text": "\\ud800"}', "bad_text"),
    ],
)
def test_bad_frames_get_the_contract_code(raw: str, code: str) -> None:
    with pytest.raises(FrameError) as caught:
        parse_send_frame(raw, 4096)
    assert caught.value.code == code


def test_the_size_limit_counts_utf8_bytes() -> None:
    assert parse_send_frame(orjson.dumps({"text": "é" * 2048}).decode(), 4096).text == "é" * 2048
    with pytest.raises(FrameError) as caught:
        parse_send_frame(orjson.dumps({"text": "é" * 2049}).decode(), 4096)
    assert caught.value.code == "too_large"


def test_a_refusal_carries_the_client_id_when_known() -> None:
    with pytest.raises(FrameError) as caught:
        parse_send_frame('{"text": "", "client_id": "k1"}', 4096)
    assert caught.value.client_id == "k1"


def test_send_frames_accept_newlines_tabs_and_an_implicit_type() -> None:
    request = parse_send_frame('{"text": "a\\n\\tb", "client_id": "k.1:2-3_4"}', 4096)
    assert (request.text, request.client_id) == ("a\n\tb", "k.1:2-3_4")


def test_wire_round_trip_and_frame_are_consistent() -> None:
    original = message(author="ann", client_id="c1", text='quote " and <b>')
    wire = original.to_wire()
    assert ChatMessage.from_wire(wire) == original
    frame = orjson.loads(message_frame_from_wire(wire))
    assert frame == {"type": "message", **original.public_fields()}


def test_readers_ignore_unknown_fields_and_accept_higher_versions() -> None:
    original = message()
    data = {**orjson.loads(original.to_wire()), "v": 2, "reactions": []}
    assert ChatMessage.from_wire(orjson.dumps(data)) == original
    frame = orjson.loads(message_frame_from_wire(orjson.dumps(data)))
    assert frame["type"] == "message" and frame["id"] == original.id and "v" not in frame


@pytest.mark.parametrize("body", [b"nope", b"[]", b'{"id": "x"}', b'{"v": 0}'])
def test_unreadable_payloads_raise(body: bytes) -> None:
    with pytest.raises(InvalidMessage):
        ChatMessage.from_wire(body)


def test_cursor_parsing() -> None:
    a, b = ids.mint()[0], ids.mint()[0]
    assert Cursor.parse(f"{a},{b}").ids == (a, b)
    for raw in ["", "x", ",".join([a] * 33), f"{a},nope"]:
        with pytest.raises(FrameError) as caught:
            Cursor.parse(raw)
        assert caught.value.code == "bad_after"


def test_cursor_filter_follows_the_contract_rule() -> None:
    seen_a = message(origin="A", ts=10_000)
    wanted = CursorFilter({"A": seen_a.id}, newest_ts=10_000, window_ms=1_000)
    assert wanted.wants(message(origin="A", ts=10_001))
    assert not wanted.wants(ChatMessage(ulid_floor(9_000), "A", "r", None, "t", 9_000))
    assert wanted.wants(message(origin="B", ts=9_500))  # unknown origin, inside the window
    assert not wanted.wants(ChatMessage(ulid_floor(8_000), "B", "r", None, "t", 8_000))
    assert wanted.lower_bound == min(seen_a.id, ulid_floor(9_000))
