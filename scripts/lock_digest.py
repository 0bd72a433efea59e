"""The digest of pyproject.toml's dependency lists, which the files in requirements/ record on their first line.

Only the lists count (not their order or spacing), so editing anything else in pyproject.toml keeps the lock current.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def dependency_digest(pyproject: Path = PYPROJECT) -> str:
    project = tomllib.loads(pyproject.read_text())["project"]
    lists = {"dependencies": sorted(project["dependencies"])}
    lists |= {extra: sorted(reqs) for extra, reqs in project.get("optional-dependencies", {}).items()}
    lists["requires-python"] = [project["requires-python"]]
    return hashlib.sha256(json.dumps(lists, sort_keys=True).encode()).hexdigest()


RECORD = "# pyproject-dependencies-sha256: "


def recorded_digest(lock: Path) -> str:
    first = lock.read_text().split("\n", 1)[0]
    return first.removeprefix(RECORD) if first.startswith(RECORD) else ""


def stale(locks: list[Path]) -> list[Path]:
    current = dependency_digest()
    return [lock for lock in locks if recorded_digest(lock) != current]


def pins(lock: Path) -> dict[str, str]:
    """Name -> version of each requirement of LOCK whose environment marker holds for this interpreter."""
    from packaging.markers import Marker  # in the dev lock; --check runs on a bare python3 without it

    lines = re.findall(r"^([A-Za-z0-9._-]+)==([^\s;]+)(?: ; ([^\\\n]+))?", lock.read_text(), re.M)
    return {canonical(name): version for name, version, marker in lines if not marker or Marker(marker).evaluate()}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def missing(lock: Path) -> list[str]:
    """The pins of LOCK that this interpreter does not have at that exact version."""
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    return sorted(f"{n}=={v}" for n, v in pins(lock).items() if installed.get(n) != v)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--missing"]:
        print(" ".join(missing(Path(argv[1]))))
        return 0
    if argv[:1] != ["--check"]:
        print(dependency_digest())
        return 0
    out_of_date = stale([Path(a) for a in argv[1:]])
    for lock in out_of_date:
        print(f"{lock} is older than pyproject.toml's dependency lists: run `make lock` and commit it", file=sys.stderr)
    return 1 if out_of_date else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
