"""The one invariant every fault test ends with, and the figures each one reports.

Every acknowledged message is stored exactly once in history; every client that stayed or came back ends with
every message of its room exactly once, in one consistent order (sorted by id).

A message is identified by its idempotency key ``(author, client_id)``: a sender whose confirmed publish lost
its ack (replica killed, broker gone) resends the key, possibly through another replica, which mints a new id.
The history service keeps the first id of a key and drops the second (contract section 4), and the page shows one
message per key; so a client's view is its messages deduplicated by key, and it must hold, for every key, the
id history stored.

An id delivered twice to one client is counted (``redelivered``) but allowed: when a replica cannot tell the
origin of a cursor id (not in its ring, not yet or never in history, e.g. just after a partition), it falls back
to the time window for that origin and may resend what the client holds (contract section 3); clients drop ids
they already hold, as the page and the CLI do. What a client ends with must still be exact.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from tests.e2e.chaos.load import ChaosLoad, ResilientClient
from tests.support.history import fetch_all

Key = tuple[str, str]
REPORT: list[str] = []  # one summary line per fault test, printed at the end of the session


@dataclass
class Figures:
    fault: str
    sent: int = 0
    acked: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    publish_failed: int = 0
    resends: int = 0
    reconnects: int = 0
    acked_id_replaced: int = 0
    redelivered: int = 0
    clients_checked: int = 0
    client_problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.fault}: sent={self.sent} acked={self.acked} stored={self.stored} lost={self.lost} "
            f"duplicated={self.duplicated} | publish_failed={self.publish_failed} resends={self.resends} "
            f"reconnects={self.reconnects} ack_id_superseded={self.acked_id_replaced} redelivered={self.redelivered} "
            f"clients_checked={self.clients_checked}"
        )


def _key(message: dict[str, Any]) -> Key:
    return (message.get("author") or "", message.get("client_id") or message["id"])


def _client_view(client: ResilientClient, stored_by_key: dict[Key, str]) -> dict[Key, str]:
    """The client's messages deduplicated by key (as the page shows them), preferring the stored id."""
    view: dict[Key, str] = {}
    for message in client.unique.values():
        key = _key(message)
        if key in view and view[key] != message["id"]:
            if stored_by_key.get(key) == message["id"]:
                view[key] = message["id"]
            continue
        view[key] = message["id"]
    return view


async def _caught_up(client: ResilientClient, stored_ids: set[str], timeout: float) -> bool:
    try:
        await client.wait_for(lambda: stored_ids <= set(client.unique) and client.connected, timeout=timeout)
    except TimeoutError:
        return False
    return True


async def settle(load: ChaosLoad, history_url: str, timeout: float = 90) -> list[dict[str, Any]]:
    """Wait until history holds every acknowledged key and every client every stored message; return history."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    acked = load.acked
    stored: list[dict[str, Any]] = []
    while loop.time() < deadline:
        try:
            stored = await fetch_all(history_url, load.room)
        except Exception:
            stored = []
        keys = {_key(m) for m in stored}
        if keys >= set(acked):
            break
        await asyncio.sleep(0.3)
    stored_ids = {m["id"] for m in stored}
    behind = [
        client.name for client in load.clients
        if not await _caught_up(client, stored_ids, max(1.0, deadline - loop.time()))
    ]
    if behind:  # check() then names what each of them lacks
        print(f"\n[chaos] clients not caught up by the deadline: {behind}")
    # Late duplicates, if any, would arrive now.
    await asyncio.sleep(0.5)
    return await fetch_all(history_url, load.room)


def check(fault: str, load: ChaosLoad, stored: list[dict[str, Any]]) -> Figures:
    """Compute the figures, record the summary line, and assert the invariant."""
    acked = load.acked
    ids = [m["id"] for m in stored]
    keys = [_key(m) for m in stored]
    stored_by_key = {_key(m): m["id"] for m in stored}
    figures = Figures(
        fault=fault,
        sent=load.sent,
        acked=len(acked),
        stored=len(stored),
        lost=len(set(acked) - set(stored_by_key)),
        duplicated=(len(ids) - len(set(ids))) + (len(keys) - len(set(keys))),
        publish_failed=load.outcomes["publish_failed"],
        resends=load.attempts - load.sent,
        reconnects=load.reconnects,
        acked_id_replaced=sum(1 for k, i in acked.items() if k in stored_by_key and stored_by_key[k] != i),
    )
    assert ids == sorted(ids), "history must answer in ascending id order"
    for client in load.clients:
        figures.clients_checked += 1
        view = _client_view(client, stored_by_key)
        problems: list[str] = []
        missing = set(stored_by_key) - set(view)
        extra = set(view) - set(stored_by_key)
        inconsistent = [k for k in stored_by_key if k in view and view[k] != stored_by_key[k]]
        if missing:
            problems.append(f"{len(missing)} stored messages missing")
        if extra:
            problems.append(f"{len(extra)} messages seen but never stored: {sorted(extra)[:3]}")
        if inconsistent:
            problems.append(f"{len(inconsistent)} keys held under another id than history's")
        figures.redelivered += len(client.duplicates)
        if problems:
            figures.client_problems.append(
                f"{client.name} (connections={client.connections}, closes={client.close_codes}): {'; '.join(problems)}"
            )
    REPORT.append(figures.line())
    print(f"\n[chaos] {figures.line()}")
    assert figures.lost == 0, f"{figures.lost} acknowledged messages not stored: {figures.line()}"
    assert figures.duplicated == 0, f"{figures.duplicated} duplicates in history: {figures.line()}"
    assert figures.acked > 0
    assert not figures.client_problems, "\n".join(figures.client_problems)
    return figures
