"""Property-based tests (hypothesis): the message schema, the client frame parser, the cursor and its filter,
the history query parser and what a parsed query selects from a real LevelDB store."""

from __future__ import annotations

import string
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from services.common.ids import CROCKFORD, UlidGenerator, encode_ulid, is_ulid, ulid_floor, ulid_timestamp
from services.common.schema import (
    MAX_CURSOR_IDS,
    ChatMessage,
    Cursor,
    CursorFilter,
    FrameError,
    InvalidMessage,
    message_frame_from_wire,
    parse_send_frame,
    validate_text,
)
from services.history.query import QueryError, parse_ids, parse_page_query
from services.history.store import MessageStore, PageQuery

settings.register_profile("durable-chat", max_examples=200, deadline=None)
settings.load_profile("durable-chat")

FRAME_CODES = {"bad_json", "bad_frame", "empty_text", "too_large", "bad_text"}
QUERY_CODES = {"bad_room", "bad_parameter", "bad_after", "bad_before", "bad_range", "bad_limit", "bad_ids"}
MAX_TEXT = 4096
MAX_TS = (1 << 48) - 1

room_chars = string.ascii_letters + string.digits
rooms = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(room_chars),
    st.text(alphabet=room_chars + "_.:-", max_size=63),
)
client_ids = st.text(alphabet=string.ascii_letters + string.digits + "_.:-", min_size=1, max_size=64)
timestamps = st.integers(min_value=0, max_value=MAX_TS)
entropies = st.integers(min_value=0, max_value=(1 << 80) - 1)
ulids = st.builds(encode_ulid, timestamps, entropies)
# Any Unicode text that JSON can carry (no lone surrogates), control characters included.
any_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=300)
allowed_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Cc")) | st.sampled_from("\n\t"), min_size=1, max_size=300
).filter(lambda t: t.strip() != "")
messages = st.builds(
    ChatMessage,
    id=ulids,
    origin=st.text(alphabet=CROCKFORD, min_size=1, max_size=8),
    room=rooms,
    author=st.none() | st.text(min_size=1, max_size=32),
    text=any_text,
    ts=timestamps,
    client_id=st.none() | client_ids,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


# --- Message schema ---------------------------------------------------------------------------------------------


@given(messages)
def test_a_message_survives_the_wire_and_becomes_the_same_frame(message: ChatMessage) -> None:
    wire = message.to_wire()
    assert ChatMessage.from_wire(wire) == message
    assert orjson.loads(message_frame_from_wire(wire)) == {"type": "message", **message.public_fields()}
    assert message.to_frame() == message_frame_from_wire(wire)


@given(messages, st.integers(min_value=1, max_value=1000),
       st.dictionaries(st.text(min_size=1, max_size=10).filter(lambda k: k not in ChatMessage.__slots__ + ("v",)),
                       json_values, max_size=4))
def test_readers_ignore_unknown_fields_and_accept_any_version(
    message: ChatMessage, version: int, extra: dict[str, object]
) -> None:
    data = {**orjson.loads(message.to_wire()), **extra, "v": version}
    assert ChatMessage.from_wire(orjson.dumps(data)) == message
    frame = orjson.loads(message_frame_from_wire(orjson.dumps(data)))
    assert frame == {"type": "message", **message.public_fields(), **{k: frame[k] for k in extra if k in frame}}
    assert "v" not in frame


@given(st.binary(max_size=200) | st.builds(orjson.dumps, json_values) |
       st.builds(orjson.dumps, st.dictionaries(st.sampled_from(["v", "id", "origin", "room", "author", "text", "ts",
                                                                 "client_id"]), json_values)))
def test_any_payload_is_a_message_or_an_invalid_message(body: bytes) -> None:
    try:
        message = ChatMessage.from_wire(body)
    except InvalidMessage:
        return
    assert is_ulid(message.id) and isinstance(message.ts, int)
    assert ChatMessage.from_wire(message.to_wire()) == message


# --- Client frames ----------------------------------------------------------------------------------------------


@given(allowed_text, st.none() | client_ids, st.booleans())
def test_a_valid_send_frame_is_accepted_as_sent(text: str, client_id: str | None, typed: bool) -> None:
    assume(len(text.encode()) <= MAX_TEXT)
    body: dict[str, object] = {"text": text}
    if client_id is not None:
        body["client_id"] = client_id
    if typed:
        body["type"] = "send"
    request = parse_send_frame(orjson.dumps(body).decode(), MAX_TEXT)
    assert (request.text, request.client_id) == (text, client_id)


@given(st.text(max_size=300) | st.builds(lambda v: orjson.dumps(v).decode(), json_values) |
       st.builds(lambda t, c: orjson.dumps({"text": t, "client_id": c}).decode(), any_text, st.text(max_size=70)) |
       st.builds(lambda t: '{"text": "' + t + '"}', st.text(alphabet="\\ud800abc\"", max_size=20)))
@example('{"text": "\\ud800"}')
@example('{"text": "a\\u0000b"}')
def test_any_frame_is_accepted_or_refused_with_a_contract_code(raw: str) -> None:
    try:
        request = parse_send_frame(raw, MAX_TEXT)
    except FrameError as exc:
        assert exc.code in FRAME_CODES
        return
    # Whatever is accepted satisfies every rule of contract section 1.
    assert refusal(request.text, MAX_TEXT) is None
    assert request.client_id is None or len(request.client_id) <= 64


def refusal(text: str, limit: int) -> str | None:
    """The contract's text rules, in the order the server applies them."""
    if not text.strip():
        return "empty_text"
    if len(text.encode()) > limit:
        return "too_large"
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in text):
        return "bad_text"
    return None


def test_the_control_character_check_agrees_with_unicodedata_on_every_code_point() -> None:
    # validate_text uses one compiled regex; the reference is the per-character unicodedata rule it replaced.
    disagreements = []
    for code_point in range(sys.maxunicode + 1):
        char = chr(code_point)
        if unicodedata.category(char) == "Cs":
            continue  # a lone surrogate is not UTF-8: refused before the control check, tested above
        try:
            validate_text("a" + char, 8)
            code = None
        except FrameError as exc:
            code = exc.code
        if code != refusal("a" + char, 8):
            disagreements.append(hex(code_point))
    assert disagreements == []


@given(any_text, st.integers(min_value=1, max_value=64))
def test_text_validation_follows_the_rules_in_utf8_bytes(text: str, limit: int) -> None:
    try:
        assert validate_text(text, limit) == text
        code = None
    except FrameError as exc:
        code = exc.code
    assert code == refusal(text, limit)


# --- ULIDs and the cursor ---------------------------------------------------------------------------------------


@given(timestamps, entropies, timestamps, entropies)
def test_ulids_sort_as_their_time_then_entropy(ts1: int, e1: int, ts2: int, e2: int) -> None:
    a, b = encode_ulid(ts1, e1), encode_ulid(ts2, e2)
    assert is_ulid(a) and ulid_timestamp(a) == ts1
    assert (a < b) == ((ts1, e1) < (ts2, e2))
    assert ulid_floor(ts1) <= a


@given(st.lists(st.integers(min_value=0, max_value=10**13), min_size=1, max_size=200))
def test_the_generator_is_monotonic_whatever_the_clock_does(clock: list[int]) -> None:
    ticks = iter(clock)
    generator = UlidGenerator(clock=lambda: next(ticks))
    minted = [generator.mint() for _ in clock]
    ids = [i for i, _ in minted]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(ulid_timestamp(i) == ts >= min(clock) for i, ts in minted)


@given(st.lists(ulids, min_size=1, max_size=MAX_CURSOR_IDS), st.sampled_from([",", ", ", " ,"]))
def test_a_cursor_of_up_to_32_ids_parses(ids: list[str], sep: str) -> None:
    cursor = Cursor.parse(sep.join(ids))
    assert cursor.ids == tuple(ids) and cursor.newest_ts == max(ulid_timestamp(i) for i in ids)


@given(st.text(max_size=120) | st.builds(",".join, st.lists(ulids, min_size=33, max_size=40)))
def test_any_other_cursor_is_bad_after(raw: str) -> None:
    try:
        cursor = Cursor.parse(raw)
    except FrameError as exc:
        assert exc.code == "bad_after"
        return
    assert 1 <= len(cursor.ids) <= MAX_CURSOR_IDS and all(is_ulid(i) for i in cursor.ids)


@st.composite
def origin_streams(draw: st.DrawFn) -> tuple[dict[str, list[ChatMessage]], dict[str, int], int]:
    """Messages from a few origins, each origin's ids in order (one generator per origin, its own clock
    skew), and how many of each origin's messages a client holds (a prefix: per-origin order)."""
    base = draw(st.integers(min_value=10**12, max_value=2 * 10**12))
    streams: dict[str, list[ChatMessage]] = {}
    for origin in draw(st.lists(st.text(alphabet=CROCKFORD, min_size=8, max_size=8), min_size=1, max_size=5,
                                unique=True)):
        steps = draw(st.lists(st.integers(min_value=-50, max_value=3000), min_size=1, max_size=25))
        clock = iter(base + draw(st.integers(min_value=-200, max_value=200)) + sum(steps[: i + 1])
                     for i in range(len(steps)))
        generator = UlidGenerator(clock=lambda c=clock: next(c))  # type: ignore[misc]
        streams[origin] = [ChatMessage(*generator.mint()[:1], origin, "r", None, "t", 0) for _ in steps]
        streams[origin] = [ChatMessage(m.id, origin, "r", None, "t", ulid_timestamp(m.id)) for m in streams[origin]]
    held = {origin: draw(st.integers(min_value=0, max_value=len(s))) for origin, s in streams.items()}
    window = draw(st.integers(min_value=1, max_value=20_000))
    return streams, held, window


@given(origin_streams())
def test_the_cursor_filter_selects_exactly_what_the_client_lacks(
    drawn: tuple[dict[str, list[ChatMessage]], dict[str, int], int],
) -> None:
    streams, held, window = drawn
    seen = [m for origin, s in streams.items() for m in s[: held[origin]]]
    assume(seen)
    by_origin = {o: s[held[o] - 1].id for o, s in streams.items() if held[o]}
    newest_ts = max(ulid_timestamp(i) for i in by_origin.values())
    wanted = CursorFilter(by_origin, newest_ts, window)
    for origin, stream in streams.items():
        for index, message in enumerate(stream):
            if origin in by_origin:  # an origin in the cursor: exactly the messages after the held prefix
                assert wanted.wants(message) == (index >= held[origin])
            else:  # an origin the client never saw: by time, within the window before its newest
                assert wanted.wants(message) == (message.ts > newest_ts - window)
            if wanted.wants(message):  # history is read from lower_bound (exclusive): nothing wanted lies below
                assert message.id > wanted.lower_bound


# --- History query parser and what it selects -------------------------------------------------------------------


param_values = st.none() | st.text(max_size=30) | ulids | st.integers(-5, 1200).map(str) | st.sampled_from(
    ["", "0", "1", "true", "false", "yes", "1000", "1001", " 5", "5 "])


@given(st.text(max_size=70) | rooms,
       st.dictionaries(st.sampled_from(["after", "before", "limit", "latest", "ids", "token", "sort", "x"]),
                       param_values, max_size=5))
def test_any_query_is_parsed_or_refused_with_a_contract_code(room: str, raw: dict[str, str | None]) -> None:
    params = {k: v for k, v in raw.items() if v is not None}
    try:
        query = parse_page_query(room, params, 1000)
    except QueryError as exc:
        assert exc.code in QUERY_CODES
        return
    assert query.room == room and 1 <= query.limit <= 1000
    assert query.after is None or is_ulid(query.after)
    assert query.before is None or is_ulid(query.before)
    assert not (query.after and query.before and query.after >= query.before)
    assert set(params) <= {"after", "before", "limit", "latest", "ids", "token"}


@given(st.text(max_size=200) | st.builds(",".join, st.lists(ulids, min_size=1, max_size=40)))
def test_ids_are_parsed_or_refused(raw: str) -> None:
    try:
        ids = parse_ids(raw)
    except QueryError as exc:
        assert exc.code == "bad_ids"
        return
    assert 1 <= len(ids) <= MAX_CURSOR_IDS and all(is_ulid(i) for i in ids)


STORED = 60


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MessageStore, list[str]]]:
    db = MessageStore(str(Path(tmp_path_factory.mktemp("prop-store")) / "db"))
    generator = UlidGenerator()
    stored = []
    for i in range(STORED):
        msg_id, ts = generator.mint()
        stored.append((ChatMessage(msg_id, "O", "room", None, f"m{i}", ts), b""))
    db.write([(m, m.to_wire()) for m, _ in stored])
    db.write([(ChatMessage(generator.mint()[0], "O", "room2", None, "other", 1), b"x")])  # another room
    try:
        yield db, [m.id for m, _ in stored]
    finally:
        db.close()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_parsed_query_selects_what_the_contract_says(
    store: tuple[MessageStore, list[str]], data: st.DataObject
) -> None:
    db, ids = store
    bound = st.none() | st.sampled_from(ids) | ulids
    params = {}
    for name, value in (("after", data.draw(bound)), ("before", data.draw(bound)),
                        ("limit", data.draw(st.none() | st.integers(1, 80).map(str))),
                        ("latest", data.draw(st.none() | st.sampled_from(["0", "1"])))):
        if value is not None:
            params[name] = value
    try:
        query = parse_page_query("room", params, 1000)
    except QueryError:
        return
    got = [orjson.loads(body)["id"] for body in db.page(query)]
    in_range = [i for i in ids if (query.after is None or i > query.after)
                and (query.before is None or i < query.before)]
    newest = query.latest or (query.before is not None and query.after is None)
    assert got == (in_range[-query.limit:] if newest else in_range[: query.limit])
    assert isinstance(query, PageQuery)
