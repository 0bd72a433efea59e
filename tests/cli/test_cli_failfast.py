"""The CLI fails fast on a service that never answered (a typo, a stopped `make run`), keeps trying with --wait,
and takes its connection options before or after the command."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.cli.main import DEFAULT_URL, UNREACHABLE, build_parser
from tests.cli.test_cli import ULID, cli, room
from tests.e2e.conftest import Endpoints
from tests.support.ports import free_port
from tests.support.tcp_proxy import TcpProxy

COMMANDS = {
    "send": ["send", "hello"],
    "tail": ["tail"],
    "history": ["history"],
}


@pytest.mark.parametrize("command", COMMANDS)
async def test_a_refused_first_connection_exits_3_at_once_with_a_hint(command: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = await cli(*COMMANDS[command], "--room", "typo", "--url", url, limit_s=20)
    elapsed = time.monotonic() - started
    assert result.rc == UNREACHABLE, result
    # About 1 s on an idle machine (interpreter start included); the bound leaves room for a loaded one. The
    # single stderr line below is what shows no retry happened (before: 9 lines over 30 s for send).
    assert elapsed < 5, f"{command} took {elapsed:.1f} s"
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"durable-chat: cannot reach the chat service at {url} (")
    assert "DURABLE_CHAT_URL" in lines[0] and "--wait SECONDS" in lines[0]


async def test_wait_keeps_trying_for_its_time_then_names_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = await cli("--wait", "1.5", "history", "--url", url, limit_s=20)
    elapsed = time.monotonic() - started
    assert result.rc == UNREACHABLE and 1.5 <= elapsed < 5, (result, elapsed)
    assert f"cannot reach the chat service at {url} for 1.5 s" in result.err.strip().splitlines()[-1]


async def test_wait_reaches_a_service_that_comes_up_later(shared_endpoints: Endpoints) -> None:
    replica = int(shared_endpoints.chat_urls[0].rsplit(":", 1)[1])
    proxy = TcpProxy([replica], shared_endpoints.local().workdir)
    sending = asyncio.create_task(cli("send", "--room", room(), "--url", proxy.url, "--wait", "20", "late hello"))
    await asyncio.sleep(1.5)
    assert not sending.done()
    proxy.start()
    try:
        result = await asyncio.wait_for(sending, 30)
    finally:
        proxy.stop()
    assert result.rc == 0, result
    assert ULID.match(result.out.strip())


@pytest.mark.parametrize(
    "argv",
    [
        ["--url", "http://a:1", "--wait", "4", "tail", "--room", "r"],
        ["tail", "--room", "r", "--url", "http://a:1", "--wait", "4"],
        ["--url", "http://b:2", "tail", "--url", "http://a:1", "--wait", "4", "--room", "r"],
        ["--wait", "4", "tail", "--room", "r", "--url", "http://a:1"],
    ],
)
def test_connection_options_work_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.command, args.room, args.url, args.wait) == ("tail", "r", "http://a:1", 4.0)


def test_defaults_come_from_the_environment_when_no_option_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DURABLE_CHAT_URL", raising=False)
    assert (build_parser().parse_args(["history"]).url, build_parser().parse_args(["history"]).wait) == (
        DEFAULT_URL,
        0.0,
    )
    monkeypatch.setenv("DURABLE_CHAT_URL", "http://env:9")
    assert build_parser().parse_args(["send", "x"]).url == "http://env:9"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["send", "--wait", "-1", "x"])
