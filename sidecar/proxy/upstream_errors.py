"""What the upstream client raises (:mod:`sidecar.proxy.upstream_conn`, `proxy.pool`)."""

from __future__ import annotations


class UpstreamError(Exception):
    """The upstream could not be reached, broke off, or did not answer in HTTP/1.1."""


class UpstreamTimeout(UpstreamError):
    """No response head within the response-header timeout."""


class UpstreamBodyTimeout(UpstreamTimeout):
    """The response body made no progress within its idle timeout."""


class StaleConnection(UpstreamError):
    """A reused connection closed before any byte of the answer arrived."""
