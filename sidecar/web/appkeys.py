"""Typed keys for what the aiohttp apps hold (``app[SERVICES]``)."""

from __future__ import annotations

from aiohttp import web

from sidecar.services import Services

SERVICES = web.AppKey("services", Services)
