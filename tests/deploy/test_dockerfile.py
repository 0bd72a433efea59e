"""The image: hadolint clean, multi-stage on a pinned base, dependencies in their own layer, numeric non-root
user, no build stage leftovers in the final stage, and a .dockerignore that keeps the context small."""

from __future__ import annotations

import re

from tests.deploy.conftest import ROOT, run

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_hadolint_is_clean(hadolint: str) -> None:
    run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)])


def test_base_is_pinned_and_multi_stage() -> None:
    steps = instructions()
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    froms = [a for k, a in steps if k == "FROM"]
    assert len(froms) == 2 and all(f.startswith("${PYTHON_IMAGE} AS ") for f in froms)


def test_dependencies_install_before_the_code_is_copied() -> None:
    steps = instructions()
    final = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    builder = steps[:final]
    copy_code = next(i for i, (k, a) in enumerate(builder) if k == "COPY" and "services" in a)
    deps = next(i for i, (k, a) in enumerate(builder) if k == "RUN" and "--requirement" in a)
    copies_before = [a for k, a in builder[:deps] if k == "COPY"]
    assert deps < copy_code and copies_before == ["requirements/runtime.txt ./requirements/"]
    # The same hashed lock as `make` (tests/unit/test_lock.py checks it is current), never a resolve at build time.
    assert "--require-hashes --requirement requirements/runtime.txt" in builder[deps][1]


def test_final_stage_runs_as_numeric_non_root_without_build_tools() -> None:
    steps = instructions()
    final = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    runtime = steps[final:]
    users = [a for k, a in runtime if k == "USER"]
    assert users and re.fullmatch(r"999(:999)?", users[-1])
    runs = " ".join(a for k, a in runtime if k == "RUN")
    assert not re.search(r"\b(apt-get|pip|gcc|build-essential)\b", runs)
    assert any(k == "COPY" and a.startswith("--from=builder /opt/venv") for k, a in runtime)
    assert [a for k, a in runtime if k == "CMD"] == ['["chat-service"]']


def test_dockerignore_allows_only_what_the_build_copies() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!requirements/runtime.txt", "!services/"} <= set(lines)


RABBITMQ_DOCKERFILE = ROOT / "tests" / "e2e" / "kind" / "rabbitmq.Dockerfile"


def test_kind_rabbitmq_image_is_hadolint_clean_debian_and_numeric_non_root(hadolint: str) -> None:
    run([hadolint, "--failure-threshold", "info", str(RABBITMQ_DOCKERFILE)])
    text = RABBITMQ_DOCKERFILE.read_text()
    assert "ARG RABBITMQ_BASE=debian:trixie-slim" in text
    assert re.search(r"^USER 999:999$", text, re.M)
    assert "apt-get install -y --no-install-recommends rabbitmq-server" in text
