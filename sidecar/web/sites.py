"""The listening socket of a listener: bound here when its host is an address.

``loop.create_server(host, port)`` resolves ``host`` even when it is an address literal
such as ``127.0.0.1``, and uvloop resolves in libuv's thread pool: its four threads start
on the first listener and then idle for the life of the process, each with its stack and
a glibc malloc arena (~0.45 MiB resident in all). When ``host`` is an IPv4 or IPv6
address, :func:`listener_site` binds the socket itself, exactly as the loop would
(``SO_REUSEADDR``, ``SO_REUSEPORT`` when asked, ``IPV6_V6ONLY`` for IPv6), and hands it
to aiohttp as a :class:`aiohttp.web.SockSite`: nothing is resolved. A host name
(``localhost``) is resolved by the loop, as before. (Connecting to an upstream given by
address resolves nothing either; one given by name starts the thread pool on its first
connection.)
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp import web


def listener_site(
    runner: web.BaseRunner, host: str, port: int, *, reuse_port: bool
) -> web.BaseSite:
    """The site that listens on ``host:port`` for ``runner`` (not started yet); OSError
    when an address cannot be bound."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # One family per socket, as the loop binds it (Linux would take IPv4 too).
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return web.SockSite(runner, sock)
