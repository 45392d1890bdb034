"""The built images, run for real with podman (`make deploy-test`): skipped unless asked for
(MMSERVE_DEPLOY_TEST=1), podman is installed and `make images` has built the images."""

from __future__ import annotations

import os

import pytest

from tests.deploy.containers.podman import available


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    if os.environ.get("MMSERVE_DEPLOY_TEST") != "1":
        reason = "container tests run with `make deploy-test` (MMSERVE_DEPLOY_TEST=1)"
    else:
        reason = available()
    if not reason:
        return
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.skip(reason=reason))
