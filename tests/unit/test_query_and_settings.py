from __future__ import annotations

import pytest

from services.chat.settings import load_config as load_chat
from services.common.settings import ConfigError
from services.history.query import QueryError, parse_ids, parse_page_query
from services.history.settings import load_config as load_history

ID1, ID2 = "01HZZZZZZZZZZZZZZZZZZZZZZ1", "01HZZZZZZZZZZZZZZZZZZZZZZ2"


def test_defaults() -> None:
    query = parse_page_query("general", {}, 1000)
    assert (query.limit, query.after, query.before, query.latest) == (100, None, None, False)


@pytest.mark.parametrize(
    ("room", "params", "code"),
    [
        ("bad room", {}, "bad_room"),
        ("x" * 65, {}, "bad_room"),
        ("r", {"limit": "0"}, "bad_limit"),
        ("r", {"limit": "1001"}, "bad_limit"),
        ("r", {"limit": "-5"}, "bad_limit"),
        ("r", {"limit": "ten"}, "bad_limit"),
        ("r", {"after": "nope"}, "bad_after"),
        ("r", {"before": "01"}, "bad_before"),
        ("r", {"after": ID2, "before": ID1}, "bad_range"),
        ("r", {"latest": "yes"}, "bad_parameter"),
        ("r", {"sort": "desc"}, "bad_parameter"),
    ],
)
def test_bad_parameters_are_named(room: str, params: dict[str, str], code: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_page_query(room, params, 1000)
    assert caught.value.code == code


def test_ids_parameter() -> None:
    assert parse_ids(f"{ID1},{ID2}") == [ID1, ID2]
    with pytest.raises(QueryError):
        parse_ids(",".join([ID1] * 33))


def test_a_bad_variable_is_named_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_MAX_MESSAGE_BYTES", "lots")
    with pytest.raises(ConfigError, match="CHAT_MAX_MESSAGE_BYTES"):
        load_chat()


def test_secrets_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", "http://user:hunter2@host/")
    with pytest.raises(ConfigError, match="AMQP_URL") as caught:
        load_history()
    assert "hunter2" not in str(caught.value)


def test_the_recovery_window_must_exceed_the_publish_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_RECOVERY_WINDOW_MS", "3000")
    monkeypatch.setenv("AMQP_PUBLISH_TIMEOUT_S", "5")
    with pytest.raises(ConfigError, match="CHAT_RECOVERY_WINDOW_MS"):
        load_chat()


def test_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.0.0/16")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    config = load_chat()
    assert config.chat.trusted_proxies == ["10.0.0.0/8", "192.168.0.0/16"] and config.log.level == "DEBUG"
    monkeypatch.setenv("CHAT_TRUSTED_PROXIES", "not-a-cidr")
    with pytest.raises(ConfigError, match="CHAT_TRUSTED_PROXIES"):
        load_chat()
