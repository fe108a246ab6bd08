"""PrometheusSource against a real Prometheus scraping a tiny exporter: every answer is an observation."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from controlplane.metrics.prometheus import Observation, ObservationKind, PrometheusSource
from tests.observability_processes import Prometheus, free_port


class Exporter:
    """A tiny aiohttp exporter on an event loop of its own, so that one Prometheus serves the whole module.

    Each scrape adds 1 to both `test_requests_total` series; `test_idle_total` never moves.
    """

    def __init__(self) -> None:
        self.gauge = 0.93
        self.requests = 0
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    async def metrics(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = (
            "# TYPE test_gauge gauge\n"
            f"test_gauge {self.gauge}\n"
            "# TYPE test_requests_total counter\n"
            f'test_requests_total{{arm="stable"}} {self.requests}\n'
            f'test_requests_total{{arm="canary"}} {self.requests}\n'
            "# TYPE test_idle_total counter\n"
            "test_idle_total 0\n"
        )
        return web.Response(text=body, content_type="text/plain")

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def start(self) -> Exporter:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    exporter = Exporter().start()
    yield exporter
    exporter.stop()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, exporter: Exporter) -> Iterator[Prometheus]:
    """Prometheus with two samples of every series (so that `rate(...[5s])` answers): ~7 s after start."""
    prometheus = Prometheus(
        tmp_path_factory.mktemp("prometheus"),
        scrape_targets=[("exporter", f"127.0.0.1:{exporter.port}", "/metrics")],
    ).start()
    try:
        prometheus.wait_for_up("exporter")
        deadline = time.monotonic() + 10
        while not prometheus.query("rate(test_idle_total[5s])"):
            assert time.monotonic() < deadline, "rate() over the exporter stayed empty for 10 s"
            time.sleep(0.1)
        yield prometheus
    finally:
        prometheus.stop()


@pytest.fixture
async def source(prometheus: Prometheus) -> AsyncIterator[PrometheusSource]:
    source = PrometheusSource(prometheus.url)
    yield source
    source.close()


async def test_one_series_is_a_value(source: PrometheusSource) -> None:
    assert await source.query("test_gauge") == Observation(ObservationKind.VALUE, 0.93, "")


async def test_scalar_result_is_a_value(source: PrometheusSource) -> None:
    assert await source.query("scalar(test_gauge) * 2") == Observation(ObservationKind.VALUE, 1.86, "")


async def test_value_follows_the_exporter(source: PrometheusSource, exporter: Exporter) -> None:
    exporter.gauge = 0.42
    try:
        deadline = time.monotonic() + 10
        while (observation := await source.query("test_gauge")).value != 0.42:
            assert time.monotonic() < deadline, f"still {observation} 10 s after the change"
            await asyncio.sleep(0.2)
    finally:
        exporter.gauge = 0.93


async def test_rate_of_a_moving_counter_is_a_value(source: PrometheusSource) -> None:
    observation = await source.query('rate(test_requests_total{arm="canary"}[5s])')

    assert observation.kind is ObservationKind.VALUE
    assert observation.value is not None and 0.5 < observation.value < 1.5  # one increment per 1 s scrape


async def test_empty_vector_is_no_data(source: PrometheusSource) -> None:
    observation = await source.query('test_gauge{arm="misspelled"}')

    assert observation == Observation(ObservationKind.NO_DATA, None, "query returned no series")


async def test_nan_from_a_ratio_without_traffic_is_no_data(source: PrometheusSource) -> None:
    observation = await source.query("sum(rate(test_idle_total[5s])) / sum(rate(test_idle_total[5s]))")

    assert observation.kind is ObservationKind.NO_DATA
    assert observation.value is None
    assert observation.message == "value is NaN: no traffic in the window?"


async def test_infinity_is_no_data(source: PrometheusSource) -> None:
    observation = await source.query("sum(rate(test_requests_total[5s])) / sum(rate(test_idle_total[5s]))")

    assert observation.kind is ObservationKind.NO_DATA
    assert "+Inf" in observation.message


async def test_two_series_is_an_error_that_says_to_aggregate(source: PrometheusSource) -> None:
    observation = await source.query("rate(test_requests_total[5s])")

    assert observation == Observation(
        ObservationKind.ERROR, None, "query returned 2 series; aggregate it with sum(...)"
    )


async def test_bad_promql_error_carries_prometheus_parse_error(source: PrometheusSource) -> None:
    observation = await source.query("sum(rate(test_requests_total[5s])")

    assert observation.kind is ObservationKind.ERROR
    assert observation.message.startswith("prometheus rejected the query (HTTP 400): bad_data: ")
    assert "parse error" in observation.message
    assert "unclosed left parenthesis" in observation.message


async def test_type_error_in_promql_names_the_expected_type(source: PrometheusSource) -> None:
    observation = await source.query("rate(test_gauge)")

    assert observation.kind is ObservationKind.ERROR
    assert "expected type range vector" in observation.message


async def test_range_vector_result_is_an_error(source: PrometheusSource) -> None:
    observation = await source.query("test_gauge[5s]")

    assert observation.kind is ObservationKind.ERROR
    assert "range vector" in observation.message


async def test_is_online_when_prometheus_answers(source: PrometheusSource) -> None:
    assert await source.is_online() is True


async def test_dead_port_is_an_error_at_once_without_leaking_credentials() -> None:
    port = free_port()
    source = PrometheusSource(f"http://aegis:s3cret-pw@127.0.0.1:{port}")
    started = time.monotonic()

    observation = await source.query("up")

    elapsed = time.monotonic() - started
    assert observation.kind is ObservationKind.ERROR
    assert observation.message.startswith(f"prometheus at http://127.0.0.1:{port} unreachable: ")
    assert "refused" in observation.message.lower()
    assert "s3cret-pw" not in observation.message
    assert source.url == f"http://127.0.0.1:{port}"
    assert elapsed < 2, f"took {elapsed:.1f} s: retries are on (the client's default retry takes 6 s)"
    assert await source.is_online() is False
    source.close()


async def test_silent_server_is_an_error_after_the_timeout() -> None:
    with socket.socket() as listener:  # the kernel accepts the connection; nobody ever answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        source = PrometheusSource(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout_seconds=0.5)
        started = time.monotonic()

        observation = await source.query("up")

        elapsed = time.monotonic() - started
        source.close()
    assert observation.kind is ObservationKind.ERROR
    assert "unreachable: no answer within 0.5 s" in observation.message
    assert elapsed < 5, f"took {elapsed:.1f} s for a 0.5 s timeout"


async def test_http_503_is_an_error_at_once() -> None:
    # Stands in for an overloaded Prometheus or a proxy in front of it: the client's default
    # retry would resend a 503 three times with backoff (6 s).
    async def unavailable(request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "error", "errorType": "unavailable", "error": "too many queries"}, status=503
        )

    app = web.Application()
    app.router.add_get("/api/v1/query", unavailable)
    async with TestServer(app, host="127.0.0.1") as server:
        source = PrometheusSource(str(server.make_url("")))
        started = time.monotonic()

        observation = await source.query("up")

        elapsed = time.monotonic() - started
        source.close()
    assert observation.kind is ObservationKind.ERROR
    assert "unreachable: HTTP 503: unavailable: too many queries" in observation.message
    assert elapsed < 2, f"took {elapsed:.1f} s: retries are on"


async def test_a_page_that_is_not_the_query_api_is_an_error() -> None:
    async def login_page(request: web.Request) -> web.Response:
        return web.Response(text="<html>please log in</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/api/v1/query", login_page)
    async with TestServer(app, host="127.0.0.1") as server:
        source = PrometheusSource(str(server.make_url("")))
        observation = await source.query("up")
        source.close()
    assert observation.kind is ObservationKind.ERROR
    assert "does not answer like Prometheus's query API" in observation.message


async def test_prometheus_stopped_mid_test_is_an_error(tmp_path: Path) -> None:
    prometheus = await asyncio.to_thread(Prometheus(tmp_path, scrape_targets=[]).start)
    source = PrometheusSource(prometheus.url)
    try:
        assert await source.query("vector(1)") == Observation(ObservationKind.VALUE, 1.0, "")

        await asyncio.to_thread(prometheus.stop)
        started = time.monotonic()
        observation = await source.query("vector(1)")

        assert observation.kind is ObservationKind.ERROR
        assert observation.message.startswith(f"prometheus at {prometheus.url} unreachable: ")
        assert time.monotonic() - started < 2
        assert await source.is_online() is False
    finally:
        source.close()
        await asyncio.to_thread(prometheus.stop)
