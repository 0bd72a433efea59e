"""The LevelDB store on a real database in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import orjson

from services.common.ids import UlidGenerator
from services.common.schema import ChatMessage
from services.history.store import MessageStore, PageQuery

ids = UlidGenerator()


def make(room: str = "r", client_id: str | None = None, author: str | None = "ann") -> tuple[ChatMessage, bytes]:
    msg_id, ts = ids.mint()
    message = ChatMessage(msg_id, "ORIGIN01", room, author, f"text {msg_id}", ts, client_id)
    return message, message.to_wire()


def stored_ids(store: MessageStore, **query: object) -> list[str]:
    page = store.page(PageQuery(**{"room": "r", "limit": 1000, **query}))  # type: ignore[arg-type]
    return [orjson.loads(body)["id"] for body in page]


def test_writes_are_idempotent_by_id(tmp_path: Path) -> None:
    store = MessageStore(str(tmp_path))
    batch = [make() for _ in range(3)]
    assert len(store.write(batch).stored) == 3
    again = store.write([batch[1], batch[1], make()])
    assert (len(again.stored), again.duplicate_ids) == (1, 2)
    assert len(stored_ids(store)) == 4


def test_a_second_id_for_a_stored_client_id_is_dropped(tmp_path: Path) -> None:
    store = MessageStore(str(tmp_path))
    first = make(client_id="k1")
    resend = make(client_id="k1")
    other_author = make(client_id="k1", author="bob")
    other_room = make(client_id="k1", room="s")
    result = store.write([first, resend])
    assert (len(result.stored), result.duplicate_client_ids) == (1, 1)
    assert len(store.write([other_author, other_room]).stored) == 2
    assert stored_ids(store) == [first[0].id, other_author[0].id]


def test_pages_are_ascending_with_exclusive_bounds(tmp_path: Path) -> None:
    store = MessageStore(str(tmp_path))
    batch = [make() for _ in range(10)]
    store.write(batch + [make(room="r2")])
    every = [m.id for m, _ in batch]
    assert stored_ids(store) == every
    assert stored_ids(store, limit=3) == every[:3]
    assert stored_ids(store, after=every[2], limit=3) == every[3:6]
    assert stored_ids(store, after=every[2], before=every[5]) == every[3:5]
    assert stored_ids(store, before=every[5], limit=2) == every[3:5]
    assert stored_ids(store, latest=True, limit=4) == every[-4:]
    assert stored_ids(store, after=every[-1]) == []


def test_room_prefixes_do_not_leak(tmp_path: Path) -> None:
    store = MessageStore(str(tmp_path))
    store.write([make(room="a"), make(room="a.b"), make(room="ab")])
    assert len(store.page(PageQuery(room="a", limit=10))) == 1


def test_get_many_and_survival_across_reopen(tmp_path: Path) -> None:
    store = MessageStore(str(tmp_path))
    batch = [make() for _ in range(3)]
    store.write(batch)
    store.close()
    reopened = MessageStore(str(tmp_path))
    bodies = reopened.get_many("r", [batch[2][0].id, batch[0][0].id, "01ZZZZZZZZZZZZZZZZZZZZZZZZ"])
    assert [orjson.loads(b)["id"] for b in bodies] == [batch[0][0].id, batch[2][0].id]
    reopened.probe()
