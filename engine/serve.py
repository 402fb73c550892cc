"""The HTTP API for online reads (aiohttp): ``POST /get-online-features`` and ``GET /health``.

Request (Feast's shape)::

    {"features": ["customer_spend:amount_sum_30d", ...],
     "entities": {"customer_id": ["c1", "c2"]},
     "full_feature_names": false,            # optional
     "now_ms": 1767225600000}                # optional: evaluate as of this time (debugging)

Response: ``OnlineResponse.to_json()`` — ``{"metadata": {"feature_names": [...], "now_ms": t},
"results": [{"values": [...], "statuses": [...]}, ..., {"values": [...], "statuses": [...],
"freshness_ms": [...]}]}``, a status per value as in Feast's response (join keys: ``PRESENT``;
features: ``engine.online_read.FeatureStatus``, docs/online.md#statuses). A missing entity
answers 200 with its empty-window defaults and ``NOT_FOUND``/``NO_STATE``, never an error.
Bad requests answer 400, an unreachable Redis 503, always with ``{"error": "..."}``.

Reads run on the event loop thread: a read is one sub-millisecond Redis round trip plus
Python work that holds the GIL anyway, so a thread pool would only add latency. Run more
processes (behind a load balancer) for more throughput.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from engine.errors import CodecError, OnlineStoreUnavailable, SkewlessError

if TYPE_CHECKING:
    from engine.store import FeatureStore

__all__ = ["make_app", "run"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6566
_MAX_BODY = 4 * 1024 * 1024
_STORE: web.AppKey[FeatureStore] = web.AppKey("store")


def make_app(store: FeatureStore) -> web.Application:
    """The aiohttp application serving ``store``'s online features.

    Example:
        >>> web.run_app(make_app(FeatureStore.from_repo("definitions")))  # doctest: +SKIP
    """
    app = web.Application(client_max_size=_MAX_BODY)
    app[_STORE] = store
    app.router.add_post("/get-online-features", _get_online_features)
    app.router.add_get("/health", _health)
    return app


def run(store: FeatureStore, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve until interrupted."""
    web.run_app(make_app(store), host=host, port=port, print=None, access_log=None)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _get_online_features(request: web.Request) -> web.Response:
    store = request.app[_STORE]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(400, f"request body is not JSON: {exc}")
    problem = _check_body(body)
    if problem:
        return _error(400, problem)
    try:
        response = store.get_online_features(
            body["features"],
            body["entities"],
            full_feature_names=body.get("full_feature_names", False),
            now_ms=body.get("now_ms"),
        )
        return web.json_response(response.to_json())
    except OnlineStoreUnavailable as exc:
        return _error(503, str(exc))
    except CodecError as exc:
        return _error(500, f"stored state cannot be decoded: {exc}")
    except SkewlessError as exc:
        return _error(400, str(exc))


def _check_body(body: Any) -> str | None:
    """What is wrong with a request body's shape, or None."""
    if not isinstance(body, dict):
        return "request body must be a JSON object with 'features' and 'entities'"
    unknown = sorted(set(body) - {"features", "entities", "full_feature_names", "now_ms"})
    if unknown:
        return f"unknown request field(s) {unknown}; known: features, entities, full_feature_names, now_ms"
    features = body.get("features")
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        return "'features' must be a list of 'view:feature' strings"
    entities = body.get("entities")
    if not isinstance(entities, dict) or not all(isinstance(v, list) for v in entities.values()):
        return "'entities' must be an object of join key -> list of values"
    if not isinstance(body.get("full_feature_names", False), bool):
        return "'full_feature_names' must be true or false"
    now_ms = body.get("now_ms")
    if now_ms is not None and (not isinstance(now_ms, int) or isinstance(now_ms, bool)):
        return "'now_ms' must be an integer (ms since the Unix epoch)"
    return None


async def _health(request: web.Request) -> web.Response:
    store = request.app[_STORE]
    try:
        ping = getattr(store.online_store, "ping", None)
        if ping is not None:
            ping()
    except OnlineStoreUnavailable as exc:
        return web.json_response({"status": "unavailable", "error": str(exc)}, status=503)
    return web.json_response({"status": "ok", "views": sorted(store.plan.views)})
