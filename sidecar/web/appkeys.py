"""Typed keys for what the aiohttp apps hold (``app[SERVICES]``)."""

from __future__ import annotations

from aiohttp import web

from sidecar.proxy.origins import PublicOrigin
from sidecar.services import Services

SERVICES = web.AppKey("services", Services)
# The proxy listener's accepted hosts and origins (state-changing POSTs check them).
PUBLIC_ORIGIN = web.AppKey("public_origin", PublicOrigin)
