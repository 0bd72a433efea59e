"""`make test`'s installers print one line per tool and keep the package managers' output in a log; the README
names everything they install."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[2]
LIB = ROOT / "scripts" / "_install_lib.sh"


def run_quietly(tmp_path: Path, command: str) -> subprocess.CompletedProcess[str]:
    script = f'set -euo pipefail; ROOT={tmp_path}; TAG=install-test; . {LIB}; quietly "the noisy tool" {command}'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)


def test_an_install_prints_one_line_and_logs_the_rest(tmp_path: Path) -> None:
    result = run_quietly(tmp_path, "bash -c 'for i in $(seq 300); do echo dpkg line $i; done'")
    assert result.returncode == 0 and result.stdout == ""
    assert re.fullmatch(r"install-test: the noisy tool: done in \d+ s\n", result.stderr)
    assert len(re.findall(r"^dpkg line \d+$", (tmp_path / ".tools" / "install.log").read_text(), re.M)) == 300


def test_a_failed_install_shows_the_end_of_its_output(tmp_path: Path) -> None:
    result = run_quietly(tmp_path, "bash -c 'for i in $(seq 50); do echo line $i; done; echo E: broken >&2; exit 100'")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith("install-test: FAILED: the noisy tool; the end of its output")
    assert lines[1:] == [f"line {i}" for i in range(32, 51)] + ["E: broken"]


def test_the_readme_names_every_tool_make_test_installs() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**What `make test` installs**") : readme.index("**Pinned dependencies.**")]
    for tool in (
        "Chromium",
        "Prometheus",
        "helm",
        "Playwright",
        "kubernetes-validate",
        "kubectl",
        "hadolint",
        "RabbitMQ 4",
        "rabbitmq4-root.sh",
        "requirements/dev.txt",
        "requirements/tools.txt",
    ):
        assert tool in section, tool
    assert len(re.findall(r"\| \d+ MB", section)) == 6
