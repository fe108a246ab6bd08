"""Routing series for dashboards, read from the traffic service at scrape time.

Gauges set on every change would have to be kept in step with stages, settings,
endpoints and node acknowledgements from many places; a collector asks the one
service that knows, when Prometheus asks. Everything it reads is in memory.

- `aegis_traffic_weight{model,version,arm}`: the percent Aegis wants per live version;
- `aegis_traffic_served_weight{model,version,arm}`: the percent the routes (and runtime
  weights) that the live Envoy nodes acknowledged send there, averaged over those nodes
  (every node's share when they agree, as `actual_canary_weight` in the API); absent
  with no live node;
- `aegis_traffic_endpoints{model,version,arm}`: live endpoints (announced and static);
- `aegis_traffic_cluster_info{model,version,arm,envoy_cluster_name}` = 1: the join key from
  Envoy's per-cluster statistics (`envoy_cluster_name`) to a model's arms, so a dashboard
  groups Envoy's request, error and latency series by version without parsing names.

`arm` is `stable` (prod, or a canary with no prod) or `canary`.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controlplane.traffic.service import TrafficService
from controlplane.xds.resources import cluster_name

LABELS = ["model", "version", "arm"]


class TrafficCollector(Collector):
    def __init__(self, traffic: TrafficService) -> None:
        self.traffic = traffic

    def collect(self) -> Iterator[Metric]:
        desired = GaugeMetricFamily(
            "aegis_traffic_weight", "Percent of a model's requests Aegis wants per live version.",
            labels=LABELS,
        )
        served = GaugeMetricFamily(
            "aegis_traffic_served_weight",
            "Percent of a model's requests the routes and weights the live Envoy nodes acknowledged send "
            "per version (mean over the nodes).",
            labels=LABELS,
        )
        endpoints = GaugeMetricFamily(
            "aegis_traffic_endpoints", "Live endpoints per model version (announced and static).",
            labels=LABELS,
        )
        clusters = GaugeMetricFamily(
            "aegis_traffic_cluster_info",
            "1 per live model version: its Envoy cluster name, to join Envoy's cluster statistics.",
            labels=[*LABELS, "envoy_cluster_name"],
        )
        for model_name, stages in sorted(self.traffic.stages.items()):
            stable = stages.prod or stages.canary  # a canary with no prod is routed alone
            if stable is None:
                continue
            arms = {stable: "stable"}
            if stages.prod is not None and stages.canary is not None:
                arms[stages.canary] = "canary"
            weights = self.traffic.weights(model_name)
            shares = [split for split in self.traffic.served_splits(model_name) if split is not None]
            for version, arm in arms.items():
                labels = [model_name, version, arm]
                desired.add_metric(labels, weights.get(version, 0))
                if shares:
                    served.add_metric(labels, sum(split.get(version, 0) for split in shares) / len(shares))
                endpoints.add_metric(labels, self.traffic.endpoint_count(model_name, version))
                clusters.add_metric([*labels, cluster_name(model_name, version)], 1)
        yield from (desired, served, endpoints, clusters)
