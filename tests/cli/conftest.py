"""The CLI runs against the same local topology as the e2e suite, on the shared private node."""

from __future__ import annotations

from tests.e2e.conftest import *  # noqa: F403  (vhost_url, endpoints)
from tests.support.shared_fixtures import module_endpoints, private_rabbit, shared_endpoints  # noqa: F401
