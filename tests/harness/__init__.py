"""The one test harness: a real sidecar, a recording upstream, raw HTTP, an injected clock.

=========================  ===============================================================
:mod:`.served`             :func:`running_sidecar` serves the product as ``sidecar serve``
                           does (both listeners) on free ports; :class:`Sidecar` holds the
                           ways in (``client`` with a cookie jar, ``http`` without, the
                           admin API helpers, :meth:`Sidecar.seal` for arbitrary claims)
:mod:`.upstream`           :class:`Upstream`, the recording app behind it (``upstream``
                           fixture in ``tests/conftest.py``)
:mod:`.raw`                :func:`raw_http`: bytes as written, answers read by their framing
:mod:`.rawupstream`        :class:`RawUpstream`: a raw-socket upstream that misbehaves exactly
:mod:`.links`              auth links on a served sidecar: :class:`~.links.Env` (``env``
                           fixture in ``tests/conftest.py``)
:mod:`.config`             the two config presets (:func:`make_config`, :func:`config_doc`)
=========================  ===============================================================

Process-level tests (signals, exit codes, logs on stderr) run ``sidecar serve`` as a child
process instead: ``tests/serve_process.py``.
"""

from tests.harness.config import ADMIN_KEY, PUBLIC_URL, ROLES, config_doc, deep_merge, make_config
from tests.harness.raw import RawResponse, parse_raw, raw_http, raw_request, request_bytes
from tests.harness.rawupstream import RawUpstream, request_path
from tests.harness.served import Clock, Sidecar, free_port, running_sidecar
from tests.harness.upstream import CHUNK, GZIP_TEXT, Recorded, Upstream, running_upstream

__all__ = [
    "ADMIN_KEY",
    "CHUNK",
    "GZIP_TEXT",
    "PUBLIC_URL",
    "ROLES",
    "Clock",
    "RawResponse",
    "RawUpstream",
    "Recorded",
    "Sidecar",
    "Upstream",
    "config_doc",
    "deep_merge",
    "free_port",
    "make_config",
    "parse_raw",
    "raw_http",
    "raw_request",
    "request_bytes",
    "request_path",
    "running_sidecar",
    "running_upstream",
]
