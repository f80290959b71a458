"""The plain aiohttp upstream every scenario proxies to: any path answers 100 bytes.

Run as its own process: ``python -m bench.upstream PORT``.
"""

from __future__ import annotations

import sys

from aiohttp import web

BODY = b"x" * 99 + b"\n"


async def answer(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="text/plain")


def build_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def main(argv: list[str]) -> None:
    port = int(argv[0])
    web.run_app(build_app(), host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main(sys.argv[1:])
