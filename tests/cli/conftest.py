"""The CLI runs against the same local topology as the e2e suite."""

from tests.e2e.conftest import *  # noqa: F403  (private_rabbit, vhost_url, endpoints)
