"""The separate metrics listener: ``GET /metrics`` in Prometheus or OpenMetrics text."""

from __future__ import annotations

from aiohttp import hdrs, web

from sidecar.telemetry.metrics import render
from sidecar.web.listener import own_answer_headers


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = render(request.headers.get(hdrs.ACCEPT, ""))
    return web.Response(
        body=body, headers={hdrs.CONTENT_TYPE: content_type, hdrs.CACHE_CONTROL: "no-store"}
    )


def metrics_app() -> web.Application:
    """The app of the separate metrics listener: ``GET /metrics`` and nothing else."""
    app = web.Application()
    app.on_response_prepare.append(own_answer_headers)
    app.router.add_get("/metrics", _metrics)
    return app
