"""Parsing of history query parameters into a PageQuery, with the contract's error codes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from services.common.ids import is_ulid
from services.common.schema import MAX_CURSOR_IDS, valid_room
from services.history.store import ExportPosition, PageQuery

DEFAULT_LIMIT = 100
_KNOWN = frozenset({"after", "before", "limit", "latest", "ids", "token"})


class QueryError(ValueError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def single_values(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The query as name -> value, refusing a name given twice (which of `limit=1&limit=2` would be meant?)."""
    params: dict[str, str] = {}
    repeated = set()
    for name, value in items:
        if name in params:
            repeated.add(name)
        params[name] = value
    if repeated:
        raise QueryError("bad_parameter", f"parameter(s) given more than once: {', '.join(sorted(repeated))[:200]}")
    return params


def parse_page_query(room: str, params: Mapping[str, str], max_page: int) -> PageQuery:
    if not valid_room(room):
        raise QueryError("bad_room", "room must match [A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
    unknown = set(params) - _KNOWN
    if unknown:
        raise QueryError("bad_parameter", f"unknown parameter(s): {', '.join(sorted(unknown))[:200]}")
    after = _optional_id(params, "after")
    before = _optional_id(params, "before")
    if after and before and after >= before:
        raise QueryError("bad_range", "after must be smaller than before")
    raw_limit = params.get("limit", str(DEFAULT_LIMIT))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= max_page:
        raise QueryError("bad_limit", f"limit must be an integer from 1 to {max_page}")
    latest = params.get("latest", "0")
    if latest not in ("0", "1"):
        raise QueryError("bad_parameter", "latest must be 0 or 1")
    return PageQuery(room=room, limit=int(raw_limit), after=after, before=before, latest=latest == "1")


def parse_ids(raw: str) -> list[str]:
    ids = [part for part in raw.split(",") if part]
    if not ids or len(ids) > MAX_CURSOR_IDS or not all(is_ulid(i) for i in ids):
        raise QueryError("bad_ids", f"ids must be 1 to {MAX_CURSOR_IDS} comma-separated message ids")
    return ids


def _optional_id(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not is_ulid(value):
        raise QueryError(f"bad_{name}", f"{name} must be a message id (26-character ULID)")
    return value


def parse_digest_query(params: Mapping[str, str]) -> str | None:
    """``GET /digest``: the one room asked for, or None for every room."""
    _refuse_unknown(params, {"room", "token"})
    return _optional_room(params, "room")


def parse_export_query(params: Mapping[str, str]) -> ExportPosition:
    """``GET /export``: resume strictly after (from_room, after); ``room``: that room alone."""
    _refuse_unknown(params, {"room", "from_room", "after", "token"})
    room = _optional_room(params, "room")
    from_room = _optional_room(params, "from_room")
    after = _optional_id(params, "after")
    if after is not None and from_room is None and room is None:
        raise QueryError("bad_parameter", "after needs from_room (or room): ids are ordered within a room")
    if room is not None and from_room not in (None, room):
        raise QueryError("bad_parameter", "from_room must be the room exported")
    return ExportPosition(from_room=from_room, after=after, room=room)


def _refuse_unknown(params: Mapping[str, str], known: set[str]) -> None:
    unknown = set(params) - known
    if unknown:
        raise QueryError("bad_parameter", f"unknown parameter(s): {', '.join(sorted(unknown))[:200]}")


def _optional_room(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not valid_room(value):
        raise QueryError("bad_room", f"{name} must match [A-Za-z0-9][A-Za-z0-9_.:-]{{0,63}}")
    return value
