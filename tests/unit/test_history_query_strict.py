"""The history API's parameters are unambiguous: `latest` is 0 or 1 (as its error says), and a parameter given
twice is refused rather than silently taking the last value."""

from __future__ import annotations

import pytest

from services.history.query import QueryError, parse_page_query, single_values


@pytest.mark.parametrize("value", ["true", "false", "yes", "", "01"])
def test_latest_other_than_0_or_1_is_a_bad_parameter(value: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_page_query("r", {"latest": value}, 1000)
    assert (caught.value.code, caught.value.detail) == ("bad_parameter", "latest must be 0 or 1")


def test_latest_0_and_1() -> None:
    assert parse_page_query("r", {"latest": "1"}, 1000).latest
    assert not parse_page_query("r", {"latest": "0"}, 1000).latest


@pytest.mark.parametrize(
    "items",
    [
        [("limit", "1"), ("limit", "2")],
        [("limit", "1"), ("limit", "1")],
        [("after", "x"), ("latest", "1"), ("after", "y")],
        [("sort", "a"), ("sort", "b")],
    ],
)
def test_a_parameter_given_twice_is_refused_naming_it(items: list[tuple[str, str]]) -> None:
    with pytest.raises(QueryError) as caught:
        single_values(items)
    assert caught.value.code == "bad_parameter"
    assert caught.value.detail == f"parameter(s) given more than once: {items[0][0]}"


def test_distinct_parameters_pass_through() -> None:
    assert single_values([("limit", "5"), ("latest", "1")]) == {"limit": "5", "latest": "1"}
