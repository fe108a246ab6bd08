"""What an Envoy node serves for a model, from the route and runtime versions it acknowledged: pure.

A model's routes name its arms; when they split between two, each arm's weight
is read from the runtime layer (RTDS) the node runs, or from the route's own
fallback where the layer has no key (a node that never applied a layer, or one
that runs a layer older than its routes). So a node's split is known only from
both of its acknowledged versions together.
"""

from __future__ import annotations

from collections.abc import Mapping

from controlplane.xds.snapshot import ModelRoutes, ModelWeights, traffic_targets


def served_split(
    model_name: str, routes: Mapping[str, ModelRoutes] | None, weights: Mapping[str, ModelWeights] | None
) -> dict[str, int] | None:
    """Percent of the model's requests per cluster on its plain route (header routes aside). Pure.

    `routes`, `weights`: each model's part of the route configuration and of the runtime
    layer the node acknowledged; None for a version this process never published (empty
    for a node that never applied a runtime layer). Returns None when the split cannot
    be known, and {} when the node answers 503 (or does not route the model).
    """
    if routes is None:
        return None
    part = routes.get(model_name)
    plain = f"{model_name}/v1"
    main = None if part is None else next((r for r in part.routes if r.get("name") == plain), None)
    if main is None:
        return {}
    layer: Mapping[str, int] = {}
    if main.get("route", {}).get("weighted_clusters", {}).get("runtime_key_prefix"):
        if weights is None:
            return None
        own = weights.get(model_name)
        layer = dict(own.weights) if own is not None else {}
    targets = traffic_targets(main, layer)
    total = sum(weight for _, weight in targets)
    return {cluster: round(100 * weight / total) for cluster, weight in targets} if total > 0 else {}
