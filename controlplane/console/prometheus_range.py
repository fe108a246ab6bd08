"""Range queries to Prometheus for the console's charts; an answer or a message, never an exception.

The analysis asks instant queries (`controlplane.metrics.prometheus`); a chart needs a
series over the rollout's time, which is Prometheus's `query_range`. A chart that cannot
be drawn says why in its place on the page, and never delays the rest of the page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import aiohttp

from controlplane.console.charts import TimeRange
from controlplane.metrics.prometheus import redact_url

# A page waits no longer than this for its charts; the next refresh tries again.
TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class RangeAnswer:
    points: tuple[tuple[float, float], ...] = ()
    error: str = ""


class PrometheusRange:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.shown_url = redact_url(self.url)  # no credentials in a message on a page
        self._session: aiohttp.ClientSession | None = None

    async def query(self, promql: str, window: TimeRange) -> RangeAnswer:
        """One series (the query sums to one); an empty answer is no points, not an error."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS))
        params = {"query": promql, "start": f"{window.start:.3f}", "end": f"{window.end:.3f}",
                  "step": f"{window.step:g}"}
        try:
            async with self._session.get(f"{self.url}/api/v1/query_range", params=params) as response:
                body = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            return RangeAnswer(error=f"prometheus at {self.shown_url} did not answer: {type(exc).__name__}")
        if not isinstance(body, dict) or body.get("status") != "success":
            detail = body.get("error", "not Prometheus's query API") if isinstance(body, dict) else "not JSON"
            return RangeAnswer(error=f"prometheus at {self.shown_url}: {str(detail)[:200]}")
        result = body.get("data", {}).get("result", [])
        if not result:
            return RangeAnswer()
        points = []
        for at, value in result[0].get("values", []):
            number = float(value)
            points.append((float(at), number if math.isfinite(number) else math.nan))
        return RangeAnswer(tuple(points))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
