"""`durable-chat`: send to a room, follow it live, export its history, or list who is in it (protocol); compare and
repair the history replicas (services/cli/replicas.py, its own exit codes).

Exit codes: 0 done; 1 refused by the server (an `error` frame, a 4xx, a policy close); 2 bad usage;
3 the service could not be reached or did not answer in time; 130 interrupted.

A service that has never answered is not retried: a wrong URL or a stopped service exits 3 at once, with a hint
(`--wait SECONDS` keeps trying for that long). Once it has answered, lost connections are retried as before.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection, connect

from services.cli import replicas
from services.common.schema import MAX_CURSOR_IDS, ROOM_RE

DEFAULT_URL = "http://127.0.0.1:8000"
OK, REFUSED, USAGE, UNREACHABLE, INTERRUPTED = 0, 1, 2, 3, 130
RETRYABLE = frozenset({"publish_failed", "rate_limited"})
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 10.0
SEEN_MAX = 200_000
Frame = dict[str, Any]


class Refused(Exception):
    """The server said no in a way a retry will not fix."""


# ---- connection helpers --------------------------------------------------------------------------


@dataclass
class Service:
    """Where the chat service is: one base URL or several to fail over between, and the credentials."""

    urls: list[str]
    token: str | None
    name: str | None
    turn: int = 0
    wait_s: float = 0.0  # how long to keep trying while the service has never answered
    reached: bool = False
    started: float = field(default_factory=time.monotonic)
    misses: int = 0

    def gives_up(self) -> bool:
        """After a failed attempt: True while the service has never answered, once every URL has been tried
        and --wait is over. A service that answered once is retried like any transient failure."""
        if self.reached:
            return False
        self.misses += 1
        return self.misses >= len(self.urls) and time.monotonic() - self.started >= self.wait_s

    def unreachable(self, exc: BaseException) -> str:
        waited = f" for {self.wait_s:g} s" if self.wait_s else ""
        return (
            f"cannot reach the chat service at {', '.join(self.urls)}{waited} ({exc or type(exc).__name__}). "
            "Is it running (`make run`)? Point the CLI at it with --url URL or DURABLE_CHAT_URL=URL; "
            "--wait SECONDS keeps trying for that long."
        )

    def next_url(self) -> str:
        url = self.urls[self.turn % len(self.urls)]
        self.turn += 1
        return url

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def ws_url(self, base: str, room: str, after: str | None, presence: bool = False) -> str:
        parts = urlsplit(base)
        scheme = {"https": "wss", "wss": "wss"}.get(parts.scheme, "ws")
        params = {"room": room, "coalesce": "1"}
        if self.name:
            params["name"] = self.name
        if after:
            params["after"] = after
        if not presence:  # a tool's connection is not a person in the room unless asked (tail --presence)
            params["presence"] = "0"
        return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", urlencode(params), ""))

    async def open(self, room: str, after: str | None = None, presence: bool = False) -> ClientConnection:
        ws = await connect(
            self.ws_url(self.next_url(), room, after, presence), additional_headers=self.headers(),
            max_size=2**22, open_timeout=10, close_timeout=2,
        )
        self.reached = True
        return ws


def backoff(attempt: int) -> float:
    """Exponential backoff with full jitter: anywhere from 0 to the ceiling.

    After a mass close (a rolling restart's 1012, a broker loss) every client starts its schedule at the same
    instant; only a delay drawn over the whole interval spreads their reconnects out instead of moving the
    storm by a fixed amount.
    """
    return random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2.0**attempt))


async def frames(ws: ClientConnection) -> AsyncIterator[Frame]:
    """Server frames; with coalesce=1 one text frame may hold several JSON objects separated by newlines."""
    async for raw in ws:
        if isinstance(raw, bytes):
            continue
        for line in raw.split("\n"):
            if line:
                frame = orjson.loads(line)
                if isinstance(frame, dict):
                    yield frame


def describe_close(code: int | None, reason: str) -> str:
    return f"{code} {reason}".strip() if code is not None else "no close code"


def close_report(exc: websockets.exceptions.ConnectionClosed) -> str:
    """Who closed the connection, with which code and reason: the server's close frame if it spoke first,
    else ours (1009 when a frame was over our size limit), else that it dropped without a close frame."""
    if exc.rcvd is not None and (exc.sent is None or exc.rcvd_then_sent):
        return f"closed by the server ({describe_close(exc.rcvd.code, exc.rcvd.reason)})"
    if exc.sent is not None:
        return f"closed by this client ({describe_close(exc.sent.code, exc.sent.reason)})"
    return "connection lost (no close frame)"


def check_policy_close(exc: websockets.exceptions.ConnectionClosed) -> None:
    if exc.rcvd is not None and exc.rcvd.code == 1008:
        raise Refused(f"connection refused by the server: {exc.rcvd.reason or 'policy'}")


def note(message: str) -> None:
    print(f"durable-chat: {message}", file=sys.stderr, flush=True)


# ---- output --------------------------------------------------------------------------------------


def _clean(text: str) -> str:
    """Keep terminals safe: no control characters other than newline and tab."""
    return "".join(ch if ch in "\n\t" or ch.isprintable() else "\ufffd" for ch in text)


def human_line(message: Frame, with_date: bool) -> str:
    stamp = datetime.fromtimestamp(int(message.get("ts", 0)) / 1000)
    when = stamp.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")
    author = _clean(str(message.get("author") or "anonymous"))
    lead = f"{when} {author}: "
    text = _clean(str(message.get("text", "")))
    return lead + text.replace("\n", "\n" + " " * len(lead))


def json_line(message: Frame) -> str:
    return orjson.dumps({k: v for k, v in message.items() if k != "type"}).decode()


@dataclass
class Printer:
    json: bool
    with_date: bool
    out: TextIO = field(default_factory=lambda: sys.stdout)

    def message(self, message: Frame) -> None:
        self.out.write((json_line(message) if self.json else human_line(message, self.with_date)) + "\n")
        self.out.flush()

    def presence(self, frame: Frame) -> None:
        """A presence snapshot, a join or a leave (``tail --presence``); JSON keeps the frame's type."""
        if self.json:
            line = orjson.dumps(frame).decode()
        else:
            when = datetime.now().strftime("%H:%M:%S")
            if frame.get("type") == "presence":
                names = ", ".join(_clean(str(m.get("author"))) for m in frame.get("members", []))
                line = f"{when} -- here: {names or 'nobody named'} ({frame.get('occupancy', 0)} connected)"
            else:
                verb = "joined" if frame.get("type") == "join" else "left"
                line = f"{when} -- {_clean(str(frame.get('author')))} {verb}"
        self.out.write(line + "\n")
        self.out.flush()


# ---- the cursor and duplicate filter -------------------------------------------------------------


class Seen:
    """The per-origin cursor (newest id per origin, the 32 most recently updated) and the duplicate filter."""

    def __init__(self, after: str | None = None) -> None:
        self.cursor: OrderedDict[str, str] = OrderedDict()
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._keys: OrderedDict[tuple[str | None, str], None] = OrderedDict()
        self._initial = [i.strip() for i in after.split(",") if i.strip()] if after else []
        self._connected_with: str | None = None
        # After an incomplete `synced` the server still owes messages older than live ones already shown:
        # reconnects use the cursor of that connection until a sync completes (contract section 3).
        self._gap_open = False
        self._gap_cursor: str | None = None

    def param(self) -> str | None:
        if self._gap_open:
            return self._gap_cursor
        ids = list(self.cursor.values()) or self._initial
        return ",".join(ids[-MAX_CURSOR_IDS:]) or None

    def connecting(self) -> str | None:
        """The cursor for a new connection, remembered in case its sync turns out incomplete."""
        self._connected_with = self.param()
        return self._connected_with

    def synced(self, complete: bool) -> None:
        if complete:
            self._gap_open, self._gap_cursor = False, None
        elif not self._gap_open and self._connected_with is not None:
            # Without a cursor it asked for recent context only; what it must never miss is what comes after
            # what it holds, so then it keeps its own cursor.
            self._gap_open, self._gap_cursor = True, self._connected_with

    def fresh(self, message: Frame) -> bool:
        """Record a message; False when it was already shown (same id, or same author and client_id)."""
        origin, msg_id = message.get("origin"), message.get("id")
        if not isinstance(msg_id, str):
            return False
        if isinstance(origin, str) and origin:
            held = self.cursor.get(origin)
            if held is None or msg_id > held:
                self.cursor.pop(origin, None)
                self.cursor[origin] = msg_id
                while len(self.cursor) > MAX_CURSOR_IDS:
                    self.cursor.popitem(last=False)
        if msg_id in self._ids:
            return False
        self._remember(self._ids, msg_id)
        client_id = message.get("client_id")
        if isinstance(client_id, str):
            key = (message.get("author"), client_id)
            if key in self._keys:
                return False
            self._remember(self._keys, key)
        return True

    @staticmethod
    def _remember(store: OrderedDict[Any, None], key: Any) -> None:
        store[key] = None
        if len(store) > SEEN_MAX:
            store.popitem(last=False)


# ---- send ----------------------------------------------------------------------------------------


@dataclass
class Outgoing:
    text: str
    client_id: str
    id: str | None = None
    error: str | None = None
    tries: int = 0
    sent_on: int = -1

    @property
    def done(self) -> bool:
        return self.id is not None or self.error is not None


async def cmd_send(service: Service, args: argparse.Namespace) -> int:
    texts = _texts(args)
    if not texts:
        note("nothing to send")
        return USAGE
    prefix = f"cli-{uuid.uuid4().hex[:16]}"
    if args.client_id and len(texts) > 1:
        note("--client-id needs exactly one message")
        return USAGE
    items = [Outgoing(text, args.client_id or f"{prefix}-{n}") for n, text in enumerate(texts)]
    printed = 0
    try:
        async with asyncio.timeout(args.timeout):
            attempt, connection = 0, 0
            while not all(item.done for item in items):
                connection += 1
                try:
                    async with await service.open(args.room) as ws:
                        attempt = 0
                        printed = await _send_over(ws, connection, items, printed, args.window)
                except websockets.exceptions.ConnectionClosed as exc:
                    check_policy_close(exc)
                    note(f"{close_report(exc)}; resending")
                except (OSError, websockets.exceptions.WebSocketException, TimeoutError) as exc:
                    if service.gives_up():
                        note(service.unreachable(exc))
                        return UNREACHABLE
                    note(f"cannot reach {service.urls[(service.turn - 1) % len(service.urls)]}: {exc}")
                if not all(item.done for item in items):
                    await asyncio.sleep(backoff(attempt))
                    attempt += 1
    except TimeoutError:
        unacked = sum(not i.done for i in items)
        note(f"gave up after {args.timeout:g} s: {unacked} message(s) not acknowledged")
        return UNREACHABLE
    except Refused as exc:
        note(str(exc))
        return REFUSED
    return REFUSED if any(item.error for item in items) else OK


def _texts(args: argparse.Namespace) -> list[str]:
    if args.text is not None and args.text != "-":
        return [args.text]
    return [line for line in sys.stdin.read().splitlines() if line.strip()]


async def _send_over(
    ws: ClientConnection, connection: int, items: list[Outgoing], printed: int, window: int
) -> int:
    by_key = {item.client_id: item for item in items}
    retries: set[asyncio.Task[None]] = set()

    async def transmit(item: Outgoing) -> None:
        item.tries += 1
        item.sent_on = connection
        await ws.send(orjson.dumps({"type": "send", "text": item.text, "client_id": item.client_id}).decode())

    async def fill() -> None:
        in_flight = sum(1 for i in items if not i.done and i.sent_on == connection)
        for item in items:
            if in_flight >= window:
                break
            if not item.done and item.sent_on != connection:
                await transmit(item)
                in_flight += 1

    async def resend_later(item: Outgoing, delay: float) -> None:
        await asyncio.sleep(delay)
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await transmit(item)  # if closed, the next connection resends it

    def flush(printed: int) -> int:
        while printed < len(items) and items[printed].done:
            if items[printed].id is not None:
                print(items[printed].id, flush=True)
            printed += 1
        return printed

    try:
        await fill()
        async for frame in frames(ws):
            kind = frame.get("type")
            item = by_key.get(frame.get("client_id") or "")
            if kind == "ack" and item is not None and not item.done:
                item.id = str(frame["id"])
            elif kind == "error":
                code, detail = str(frame.get("code")), str(frame.get("detail", ""))
                if item is None:
                    if code == "history_unavailable":
                        continue  # sending does not need history
                    note(f"{code}: {detail}")
                    continue
                if code in RETRYABLE and item.tries < 8:
                    task = asyncio.create_task(resend_later(item, backoff(item.tries)))
                    retries.add(task)
                    task.add_done_callback(retries.discard)
                    continue
                item.error = code
                note(f"{code}: {detail}")
            else:
                continue
            printed = flush(printed)
            if all(i.done for i in items):
                return printed
            await fill()
    finally:
        for task in retries:
            task.cancel()
    return printed


# ---- tail ----------------------------------------------------------------------------------------


async def cmd_tail(service: Service, args: argparse.Namespace) -> int:
    seen = Seen(args.after)
    printer = Printer(json=args.json, with_date=False)
    first = args.after is None
    attempt = 0
    while True:
        try:
            async with await service.open(args.room, seen.connecting(), presence=args.presence) as ws:
                backlog: list[Frame] = []
                synced = False
                async for frame in frames(ws):
                    kind = frame.get("type")
                    if kind == "message":
                        if not seen.fresh(frame):
                            continue
                        if first and not synced:
                            backlog.append(frame)  # the first connect shows only the last --lines of it
                        else:
                            printer.message(frame)
                    elif kind == "synced":
                        complete = frame.get("complete") is not False
                        seen.synced(complete)
                        if synced:  # a late backfill after a history outage has ended
                            if complete and args.verbose:
                                note("history is back: caught up")
                            continue
                        synced, attempt = True, 0
                        if first:
                            for message in backlog[-args.lines:] if args.lines else []:
                                printer.message(message)
                            first = False
                        if args.verbose:
                            note(f"following #{args.room}")
                    elif kind in ("presence", "join", "leave"):
                        printer.presence(frame)
                    elif kind == "error":
                        if frame.get("code") == "history_unavailable":
                            note("history is unavailable: showing recent messages; the rest follows when it returns")
                        else:
                            note(f"{frame.get('code')}: {frame.get('detail', '')}")
            note(f"closed by the server ({describe_close(ws.close_code, ws.close_reason or '')}); resuming")
        except websockets.exceptions.ConnectionClosed as exc:
            try:
                check_policy_close(exc)
            except Refused as refused:
                note(str(refused))
                return REFUSED
            note(f"{close_report(exc)}; resuming")
        except (OSError, websockets.exceptions.WebSocketException, TimeoutError) as exc:
            if service.gives_up():
                note(service.unreachable(exc))
                return UNREACHABLE
            note(f"cannot connect: {exc}")
        delay = backoff(attempt)
        attempt += 1
        if args.verbose:
            note(f"reconnecting in {delay:.1f} s")
        await asyncio.sleep(delay)


# ---- history -------------------------------------------------------------------------------------


class Progress:
    """Messages exported so far, on stderr: redrawn in place on a terminal, a line a second otherwise."""

    def __init__(self, mode: str, room: str) -> None:
        self.tty = sys.stderr.isatty()
        self.enabled = mode == "always" or (mode == "auto" and self.tty)
        self.room = room
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, count: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self._last < (0.2 if self.tty else 1.0):
            return
        self._last = now
        elapsed = max(now - self.started, 1e-6)
        text = f"#{self.room}: {count:,} messages, {count / elapsed:,.0f} msg/s"
        if final:
            text = f"#{self.room}: exported {count:,} messages in {elapsed:.1f} s"
        if self.tty:
            sys.stderr.write("\r\x1b[K" + text + ("\n" if final else ""))
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()


async def cmd_history(service: Service, args: argparse.Namespace) -> int:
    printer = Printer(json=args.json, with_date=True)
    progress = Progress(args.progress, args.room)
    after: str | None = args.after
    remaining: int | None = args.limit
    total, failures = 0, 0
    timeout = httpx.Timeout(30.0, connect=10.0)
    async with httpx.AsyncClient(headers=service.headers(), timeout=timeout) as client:
        while remaining is None or remaining > 0:
            size = args.page_size if remaining is None else min(args.page_size, remaining)
            params: dict[str, str | int] = {"limit": size}
            if after:
                params["after"] = after
            url = f"{service.next_url().rstrip('/')}/api/rooms/{args.room}/messages"
            count = 0
            try:
                async for message in _page(client, url, params):
                    printer.message(message)
                    after = str(message["id"])
                    count += 1
                    progress.update(total + count)
            except Refused as exc:
                note(str(exc))
                return REFUSED
            except (httpx.HTTPError, Unavailable) as exc:
                if count or not isinstance(exc, httpx.TransportError):
                    service.reached = True  # it answered, with an error worth retrying
                elif service.gives_up():
                    note(service.unreachable(exc))
                    return UNREACHABLE
                # Resume from the last id written: nothing is repeated or skipped.
                total += count
                if remaining is not None:
                    remaining -= count
                failures = 0 if count else failures + 1
                if failures > args.retries:
                    progress.update(total, final=True)
                    resume = f"; resume with --after {after}" if after else ""
                    note(f"history unavailable ({exc}){resume}")
                    return UNREACHABLE
                await asyncio.sleep(backoff(failures))
                continue
            service.reached = True
            failures = 0
            total += count
            if remaining is not None:
                remaining -= count
            if count < size:
                break
    progress.update(total, final=True)
    return OK


class Unavailable(Exception):
    pass


# ---- who -----------------------------------------------------------------------------------------


async def cmd_who(service: Service, args: argparse.Namespace) -> int:
    """The room's members across the cluster (any replica answers for all), the earliest first."""
    attempt = 0
    async with httpx.AsyncClient(headers=service.headers(), timeout=httpx.Timeout(10.0)) as client:
        while True:
            url = f"{service.next_url().rstrip('/')}/api/rooms/{args.room}/presence"
            try:
                response = await client.get(url)
                break
            except httpx.TransportError as exc:
                if service.gives_up():
                    note(service.unreachable(exc))
                    return UNREACHABLE
                await asyncio.sleep(backoff(attempt))
                attempt += 1
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        note(f"{error.get('code', f'HTTP {response.status_code}')}: {error.get('detail', '')}".rstrip(": "))
        return UNREACHABLE if response.status_code >= 500 else REFUSED
    if args.json:
        sys.stdout.write(orjson.dumps(body).decode() + "\n")
        return OK
    for member in body["members"]:
        since = datetime.fromtimestamp(int(member["since"]) / 1000).strftime("%Y-%m-%d %H:%M:%S")
        count = member["connections"]
        plural = "s" if count != 1 else ""
        sys.stdout.write(f"{_clean(str(member['author']))}\tsince {since}\t{count} connection{plural}\n")
    listed, total = len(body["members"]), body.get("total", len(body["members"]))
    more = f" (the first {listed} listed)" if total > listed else ""
    note(f"#{args.room}: {total} member{'s' if total != 1 else ''}{more}, {body['occupancy']} connected")
    return OK


async def _page(client: httpx.AsyncClient, url: str, params: dict[str, str | int]) -> AsyncIterator[Frame]:
    ndjson = {"Accept": "application/x-ndjson"}
    async with client.stream("GET", url, params=params, headers=ndjson) as response:
        if response.status_code != 200:
            body = await response.aread()
            try:
                error = orjson.loads(body)["error"]
                reason = f"{error['code']}: {error['detail']}"
            except (orjson.JSONDecodeError, KeyError, TypeError):
                reason = f"HTTP {response.status_code}"
            if response.status_code >= 500:
                raise Unavailable(reason)
            raise Refused(reason)
        async for line in response.aiter_lines():
            if line.strip():
                yield orjson.loads(line)


# ---- command line --------------------------------------------------------------------------------


def _room(value: str) -> str:
    if not ROOM_RE.fullmatch(value):
        raise argparse.ArgumentTypeError("a room is [A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
    return value


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _non_negative(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise argparse.ArgumentTypeError("must be 0 or more seconds")
    return number


def connection_options(with_defaults: bool) -> argparse.ArgumentParser:
    """--url, --token, --name and --wait, accepted before or after the command. Only the top-level parser has
    defaults: after the command they are SUPPRESSed, so an option given before the command is not reset."""
    options = argparse.ArgumentParser(add_help=False)

    def default(value: object) -> object:
        return value if with_defaults else argparse.SUPPRESS

    options.add_argument(
        "--url", default=default(os.environ.get("DURABLE_CHAT_URL", DEFAULT_URL)),
        help=f"chat service base URL; comma-separate several to fail over between them "
        f"(env DURABLE_CHAT_URL, default {DEFAULT_URL})",
    )
    options.add_argument("--token", default=default(os.environ.get("DURABLE_CHAT_TOKEN")),
                         help="JWT sent as a bearer token (env DURABLE_CHAT_TOKEN)")
    options.add_argument("--name", default=default(os.environ.get("DURABLE_CHAT_NAME")),
                         help="display name when authentication is off (env DURABLE_CHAT_NAME)")
    options.add_argument(
        "--wait", type=_non_negative, default=default(0.0), metavar="SECONDS",
        help="keep trying a service that has not answered yet for this long (default 0: exit 3 at once)",
    )
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="durable-chat", description="Send to, follow and export durable-chat rooms.",
        epilog="Exit codes: 0 ok, 1 refused by the server, 2 usage, 3 unreachable or timed out.",
        parents=[connection_options(with_defaults=True)],
    )
    after_command = connection_options(with_defaults=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, parents=[after_command])

    send = command("send", help="send a message and print its id once the broker confirmed it")
    send.add_argument("--room", type=_room, default="general")
    send.add_argument("text", nargs="?", help="the message; omit or '-' to send each line of stdin")
    send.add_argument("--client-id", help="idempotency key: resending the same key returns the first id")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for acks (%(default)s)")
    send.add_argument("--window", type=_positive, default=50, help=argparse.SUPPRESS)
    send.set_defaults(run=cmd_send)

    tail = command("tail", help="follow a room live, resuming without gaps or repeats")
    tail.add_argument("--room", type=_room, default="general")
    tail.add_argument("-n", "--lines", type=int, default=10, help="recent messages shown first (%(default)s)")
    tail.add_argument("--after", help="start after this id (or per-origin cursor): shows everything newer")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument("-v", "--verbose", action="store_true", help="report (re)connections on stderr")
    tail.add_argument("--presence", action="store_true",
                      help="take part in presence: show who is here, then joins and leaves")
    tail.set_defaults(run=cmd_tail)

    who = command("who", help="list the members of a room across every replica")
    who.add_argument("--room", type=_room, default="general")
    who.add_argument("--json", action="store_true", help="the presence API's answer as one JSON object")
    who.set_defaults(run=cmd_who)

    history = command("history", help="export a room's history, oldest first")
    history.add_argument("--room", type=_room, default="general")
    history.add_argument("--after", help="start after this message id")
    history.add_argument("--limit", type=_positive, help="at most this many messages (default: all)")
    history.add_argument("--page-size", type=_positive, default=1000, help="per request (%(default)s)")
    history.add_argument("--json", action="store_true", help="NDJSON: one message object per line")
    history.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                         help="progress on stderr (auto: when stderr is a terminal)")
    history.add_argument("--retries", type=int, default=5, help="retries of a failed page (%(default)s)")
    history.set_defaults(run=cmd_history)

    replicas.add_commands(command)  # verify, repair: they talk to the history replicas themselves
    for name in ("verify", "repair"):
        commands.choices[name].set_defaults(run=cmd_replicas)
    return parser


async def cmd_replicas(service: Service, args: argparse.Namespace) -> int:
    return await replicas.run(args, service.token)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    urls = [url.strip() for url in args.url.split(",") if url.strip()]
    if not urls:
        note("--url is empty")
        sys.exit(USAGE)
    service = Service(urls, args.token or None, args.name, wait_s=args.wait)
    try:
        code = asyncio.run(args.run(service, args))
    except KeyboardInterrupt:
        code = INTERRUPTED
    except BrokenPipeError:  # `durable-chat history … | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        code = OK
    sys.exit(code)
