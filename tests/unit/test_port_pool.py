"""Ports for started processes: handed out in turn, skipping taken ones, disjoint per worker."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from controlplane.demo.processes import PortPool, port_share


@pytest.fixture
def three_free_ports() -> Iterator[int]:
    """The first of three ports in a row that nothing listens on (from a quiet corner of the range)."""
    for first in range(32000, 32700, 7):
        probes = [socket.socket() for _ in range(3)]
        try:
            for offset, probe in enumerate(probes):
                probe.bind(("127.0.0.1", first + offset))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        yield first
        return
    pytest.fail("no three free ports in a row in 32000-32700")


def test_ports_come_in_turn_and_come_back_only_after_the_range_went_round(three_free_ports: int) -> None:
    first = three_free_ports
    pool = PortPool(first, first + 2)
    assert [pool.take() for _ in range(4)] == [first, first + 1, first + 2, first]


def test_a_start_inside_the_range_is_where_handing_out_begins(three_free_ports: int) -> None:
    first = three_free_ports
    assert PortPool(first, first + 2, start=first + 2).take() == first + 2
    # A start outside the range is folded into it, as a pid is.
    assert PortPool(first, first + 2, start=first + 4).take() == first + 1


def test_a_port_something_listens_on_is_skipped(three_free_ports: int) -> None:
    first = three_free_ports
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first + 1))
        taken.listen()
        pool = PortPool(first, first + 2)
        assert [pool.take() for _ in range(3)] == [first, first + 2, first]


def test_a_range_with_every_port_taken_is_an_error_not_a_loop(three_free_ports: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", three_free_ports))
        with pytest.raises(RuntimeError, match="no free port left"):
            PortPool(three_free_ports, three_free_ports).take()


@pytest.mark.parametrize(("first", "last"), [(80, 2000), (3000, 2999), (60000, 70000)])
def test_a_range_outside_unprivileged_ports_or_upside_down_is_refused(first: int, last: int) -> None:
    with pytest.raises(ValueError, match="port range"):
        PortPool(first, last)


@pytest.mark.parametrize("shares", [1, 2, 3, 7])
def test_shares_of_the_range_do_not_overlap_and_stay_below_the_ephemeral_ports(shares: int) -> None:
    parts = [port_share(share, shares) for share in range(shares)]
    for (_, last), (next_first, _) in itertools.pairwise(parts):
        assert last < next_first
    assert all(first <= last < 32768 for first, last in parts)
    with pytest.raises(ValueError):
        port_share(shares, shares)


def chosen_in_a_new_process(local_ports: str) -> subprocess.CompletedProcess[str]:
    code = "from controlplane.demo.processes import free_port; print(free_port(), free_port())"
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "AEGIS_LOCAL_PORTS": local_ports},
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_aegis_local_ports_moves_the_range_of_a_demo_or_a_test_run(three_free_ports: int) -> None:
    first = three_free_ports
    chosen = chosen_in_a_new_process(f"{first}-{first + 2}")
    assert chosen.returncode == 0, chosen.stderr
    assert {int(port) for port in chosen.stdout.split()} <= {first, first + 1, first + 2}
    refused = chosen_in_a_new_process("twenty-thousand")
    assert refused.returncode != 0
    assert "AEGIS_LOCAL_PORTS='twenty-thousand': expected first-last" in refused.stderr
