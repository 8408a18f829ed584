"""Routes open to anyone who can reach the port: liveness, readiness, Prometheus metrics.

Nothing here carries call data.
"""

from __future__ import annotations

from quart import Blueprint, Response
from quart.typing import ResponseReturnValue

from bridge import metrics
from bridge.web.state import web_state

health = Blueprint("health", __name__)


@health.get("/healthz")
async def healthz() -> ResponseReturnValue:
    """The process is alive."""
    return {"status": "ok"}


@health.get("/readyz")
async def readyz() -> ResponseReturnValue:
    """200 when every readiness check passes, else 503; the checks in the JSON either way."""
    readiness = web_state().readiness
    checks = await readiness() if readiness is not None else {}
    ok = all(passed for passed, _ in checks.values())
    body = {"ready": ok, "checks": {name: {"ok": passed, "detail": detail}
                                    for name, (passed, detail) in checks.items()}}
    return body, 200 if ok else 503


@health.get("/metrics")
async def metrics_view() -> ResponseReturnValue:
    """Prometheus exposition of ``bridge.metrics``."""
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


__all__ = ["health"]
