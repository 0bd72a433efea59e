"""Fixtures for suites that share one private node and one topology per module (browser, CLI).

A conftest imports them by name; pytest then registers them for its folder.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Endpoints
from tests.support.rabbit import PrivateRabbit
from tests.support.shared_node import module_topology, revive, shared_private_rabbit


@pytest.fixture(scope="session")
def private_rabbit() -> Iterator[PrivateRabbit]:
    with shared_private_rabbit() as node:
        yield node


@pytest.fixture(scope="module")
def module_endpoints(private_rabbit: PrivateRabbit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    with module_topology(private_rabbit, tmp_path_factory.mktemp("topology")) as endpoints:
        yield endpoints


@pytest.fixture
def shared_endpoints(module_endpoints: Endpoints) -> Endpoints:
    """The module's topology, with anything a previous test killed started again (each test uses its own room)."""
    return revive(module_endpoints)
