"""The proxy listener's router: a request outside the sidecar's own paths skips route lookup.

aiohttp's router walks the path's segments and matches a regular expression for every
request; on the proxy almost every request goes to the one catch-all route. Once the app
is frozen, :class:`ProxyRouter` knows the literal beginning of every other route (the
prefix's pages, ``/verify``, forward-auth, Envoy's path prefix): a path that begins with
none of them is handed to the catch-all at once — exactly the route aiohttp's lookup would
have found, with the same ``tail``. Anything else (and any path the catch-all's pattern
would not match) takes aiohttp's lookup as before.
"""

from __future__ import annotations

import warnings
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import AbstractRoute, UrlDispatcher, UrlMappingMatchInfo

CATCH_ALL = "/{tail:.*}"


class ProxyRouter(UrlDispatcher):
    """``UrlDispatcher`` with a shortcut to the route added by :meth:`add_catch_all`."""

    def __init__(self) -> None:
        super().__init__()
        self._catch_all: AbstractRoute | None = None
        self._own: tuple[str, ...] = ()

    def add_catch_all(self, handler: Handler) -> None:
        """Route every method and path no other route takes to ``handler`` (add it last)."""
        self._catch_all = self.add_route("*", CATCH_ALL, handler)

    def freeze(self) -> None:
        super().freeze()
        self._own = self.own_literals()

    def own_literals(self) -> tuple[str, ...]:
        """The literal beginnings of every route but the catch-all (the sidecar's own
        paths: a path that begins with none of them is the catch-all's)."""
        catch_all = self._catch_all
        own = []
        for resource in self.resources():
            if catch_all is not None and resource is catch_all.resource:
                continue
            # A route's path can only begin with the literal part of its pattern.
            own.append(resource.canonical.split("{", 1)[0])
        return tuple(own)

    async def resolve(self, request: web.Request) -> UrlMappingMatchInfo:
        route = self._catch_all
        if route is not None and self._own:
            path = request.rel_url.path_safe
            # The catch-all's pattern is "/(?P<tail>.*)": a leading slash, no newline.
            if path[:1] == "/" and "\n" not in path and not path.startswith(self._own):
                return UrlMappingMatchInfo({"tail": path[1:]}, route)
        return await super().resolve(request)


def proxy_application(**kwargs: Any) -> tuple[web.Application, ProxyRouter]:
    """A ``web.Application`` routed by a :class:`ProxyRouter`, and the router. (aiohttp marks
    its ``router`` argument deprecated without offering another way to supply one.)"""
    router = ProxyRouter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return web.Application(router=router, **kwargs), router
