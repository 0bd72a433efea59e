"""docs/protocol.md stands alone: no link or path outside the repository, the stored form's `v` explained, every
history API refusal code and every WebSocket error code the services can send documented."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from services.chat.app import create_app
from services.chat.settings import load_config

ROOT = Path(__file__).parents[2]
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()


def test_no_link_or_path_leads_outside_the_repository() -> None:
    assert "../" not in PROTOCOL and "shared/notes" not in PROTOCOL and "contract" not in PROTOCOL.lower()
    for target in re.findall(r"\]\(([^)#]+)", PROTOCOL):
        assert not re.match(r"[a-z]+://", target), f"external link {target}"
        assert (ROOT / "docs" / target).resolve().is_relative_to(ROOT) and (ROOT / "docs" / target).exists()


def test_the_stored_form_and_its_version_field_are_documented() -> None:
    assert '`{"v": 1, "id", "origin", "room", "author", "text", "ts",' in PROTOCOL
    assert re.search(r"^- `v`: the version of the stored form", PROTOCOL, re.M)


def codes_raised_in(path: Path) -> set[str]:
    return set(re.findall(r'(?:QueryError|FrameError|Refused)\(\s*f?"([a-z_]+)"', path.read_text()))


def test_every_refusal_code_the_services_send_is_documented() -> None:
    history = codes_raised_in(ROOT / "services" / "history" / "query.py") | {"unauthorized"}
    frames = codes_raised_in(ROOT / "services" / "common" / "schema.py") | codes_raised_in(
        ROOT / "services" / "chat" / "endpoints.py"
    )
    assert {"bad_parameter", "bad_limit", "bad_range", "bad_ids"} <= history
    assert {"bad_json", "too_large", "rate_limited"} <= frames
    missing = sorted(code for code in history | frames if f"`{code}`" not in PROTOCOL)
    assert not missing, f"docs/protocol.md lacks {missing}"
    assert "`latest=0\\|1`" in PROTOCOL and "`limit=1&limit=2` is refused" in PROTOCOL


async def test_a_replica_serves_an_icon_at_the_path_browsers_ask_for() -> None:
    app = create_app(load_config())  # no lifespan: the static page needs no broker
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as client:
        response = await client.get("/favicon.ico")
    assert response.status_code == 200
    assert response.headers["content-type"] in ("image/vnd.microsoft.icon", "image/x-icon")
    assert response.content[:4] == b"\x00\x00\x01\x00" and b"\x89PNG" in response.content
