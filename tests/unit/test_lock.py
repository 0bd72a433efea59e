"""The hashed lock in requirements/ is current with pyproject.toml, closed, and what `make` and the image install.

Per-origin order rests on aiormq writing `basic_publish` frames in call order, so the exact aiormq (and every other
dependency) must be the one the tests ran with: `make`, `.ci/run` and the Dockerfile all install from these files.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).parents[2]
LOCKS = {name: ROOT / "requirements" / f"{name}.txt" for name in ("runtime", "dev", "tools")}
EXTRAS = {"runtime": [], "dev": ["test"], "tools": ["test", "tools"]}


def load_lock_digest() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_digest", ROOT / "scripts" / "lock_digest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock_digest = load_lock_digest()


def entries(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """Name -> (version, hashes) of every requirement line of LOCK, whatever its marker."""
    blocks = re.findall(r"^([A-Za-z0-9._-]+)==([^\s;]+)[^\n]*\\\n((?:\s+--hash=\S+[ \\]*\n)+)", lock.read_text(), re.M)
    return {lock_digest.canonical(n): (v, re.findall(r"--hash=(sha256:\w+)", h)) for n, v, h in blocks}


def declared(extras: list[str]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


@pytest.mark.parametrize("name", LOCKS)
def test_lock_records_the_current_pyproject_dependencies(name: str) -> None:
    assert lock_digest.recorded_digest(LOCKS[name]) == lock_digest.dependency_digest(), (
        f"{LOCKS[name]} was resolved from other dependency lists than pyproject.toml's: run `make lock`"
    )


@pytest.mark.parametrize("name", LOCKS)
def test_every_declared_requirement_is_pinned_within_its_range_with_hashes(name: str) -> None:
    pinned = entries(LOCKS[name])
    assert pinned and all(hashes for _, hashes in pinned.values())
    for req in declared(EXTRAS[name]):
        version, _ = pinned[lock_digest.canonical(req.name)]
        assert req.specifier.contains(version, prereleases=True), f"{req} is locked at {version}"
    assert "aiormq" in pinned


def test_the_three_locks_agree_on_every_version() -> None:
    versions: dict[str, set[str]] = {}
    for lock in LOCKS.values():
        for package, (version, _) in entries(lock).items():
            versions.setdefault(package, set()).add(version)
    assert {p: v for p, v in versions.items() if len(v) > 1} == {}
    assert set(entries(LOCKS["runtime"])) <= set(entries(LOCKS["dev"])) <= set(entries(LOCKS["tools"]))


def test_the_venv_runs_the_locked_versions() -> None:
    assert lock_digest.missing(LOCKS["dev"]) == [], "the venv differs from requirements/dev.txt: run `make deps`"


def test_make_and_ci_install_from_the_lock_and_refuse_a_stale_one() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*--require-hashes -r \$\(LOCK\)", makefile)
    assert "LOCK := requirements/dev.txt" in makefile
    assert "scripts/lock_digest.py --check" in makefile
    assert "scripts/lock_digest.py --check requirements/*.txt" in (ROOT / ".ci" / "run").read_text()


def test_a_changed_dependency_list_is_caught(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    text = (ROOT / "pyproject.toml").read_text()
    pyproject.write_text(text.replace('"aio-pika>=9.5,<11"', '"aio-pika>=9.5,<12"'))
    assert lock_digest.dependency_digest(pyproject) != lock_digest.dependency_digest()
    pyproject.write_text(text.replace("line-length = 120", "line-length = 100"))
    assert lock_digest.dependency_digest(pyproject) == lock_digest.dependency_digest()
