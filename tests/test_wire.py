"""What crosses the wire per request: bytes the sidecar holds go out in one write.

Counted with the kernel's own figure, ``tcpi_data_segs_in`` of ``TCP_INFO`` (Linux 4.6+), on
real loopback sockets with ``TCP_NODELAY`` (the sidecar's): each ``send`` of the sidecar is
one data segment, so a request written as head, then body, then the chunked ending reaches
the upstream as three segments, and costs it up to three reads.

* a request body the sidecar holds whole (the lean front's, or one aiohttp has already
  read) reaches the upstream in its head's segment, on a fresh upstream connection (the
  pool's task path) and on a pooled one, through either front;
* an answer streamed to the client (no length, or a large one) carries the body bytes that
  came with the upstream's head in the head's own segment;
* a request whose body was sent with its head is still never sent twice when the idle
  connection turns out closed (the pool's rule for bodies, RFC 9110 §9.2.2);
* the lean front's answers given in one event-loop iteration leave together: pipelined
  requests answered at once (a 401, a 403) reach the client in one segment, at most
  ``_MAX_HELD`` answers to a write, in order, and all of them before a close, or before
  the end of input the client sent after its request.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from pathlib import Path

import pytest

from sidecar.web.lean import _MAX_HELD
from tests.harness.raw import raw_http
from tests.harness.served import Sidecar, running_sidecar
from tests.test_upstream import closing_after_first_answer, raw_upstream

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="TCP_INFO's segment counts are Linux's"
)

_DATA_SEGS_IN = 152  # offsetof(struct tcp_info, tcpi_data_segs_in)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def data_segments_in(sock: socket.socket) -> int:
    """Data segments the connection has received so far."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, _DATA_SEGS_IN)[0])


def test_the_segment_count_is_the_kernels() -> None:
    """The offset is right: two sends are two segments, one send of both is one."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer, _ = server.accept()
        with client, peer:
            client.sendall(b"head")
            assert peer.recv(16) == b"head"
            client.sendall(b"body")
            assert peer.recv(16) == b"body"
            assert data_segments_in(peer) == 2
            client.sendall(b"head" + b"body")
            assert peer.recv(16) == b"headbody"
            assert data_segments_in(peer) == 3


class _Counting:
    """An upstream that reads each request whole (Content-Length or chunked), notes how
    many data segments its connection had received by then, and answers ``ok``."""

    def __init__(self) -> None:
        self.segments: list[tuple[int, int]] = []  # (connection, segments so far)
        self.requests: list[bytes] = []

    async def script(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        connection = id(writer)
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lower = head.lower()
            if b"transfer-encoding: chunked" in lower:
                body = await reader.readuntil(b"\r\n0\r\n\r\n")
            elif b"content-length: " in lower:
                length = int(lower.split(b"content-length: ")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
            else:
                body = b""
            self.requests.append(head + body)
            self.segments.append((connection, data_segments_in(sock)))
            writer.write(OK)
            await writer.drain()

    def per_connection(self) -> list[list[int]]:
        """Each connection's segment counts after each of its requests, in order."""
        seen: dict[int, list[int]] = {}
        for connection, count in self.segments:
            seen.setdefault(connection, []).append(count)
        return list(seen.values())


def _post(sc: Sidecar, cookie: str, body: bytes, *, chunked: bool = False) -> bytes:
    host = f"127.0.0.1:{sc.proxy_port}"
    if chunked:
        framing = "Transfer-Encoding: chunked\r\n"
        sent = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
    else:
        framing, sent = f"Content-Length: {len(body)}\r\n", body
    head = f"POST /app/form HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n{framing}\r\n"
    return head.encode() + sent


@pytest.mark.parametrize("lean_front", [True, False], ids=["lean", "aiohttp"])
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
async def test_a_body_in_hand_reaches_the_upstream_in_its_heads_segment(
    tmp_path: Path, lean_front: bool, chunked: bool
) -> None:
    """Two POSTs in a row: the first on a fresh upstream connection, the second on the
    pooled one; each request (head, body and, re-chunked, the ending) is one segment."""
    counting = _Counting()
    async with raw_upstream(counting.script) as up:
        overrides: dict[str, object] = {
            "proxy": {"upstream": f"http://127.0.0.1:{up.port}", "lean_front": lean_front}
        }
        async with running_sidecar(tmp_path, overrides=overrides) as sc:
            cookie = f"{sc.cookie_name}={await sc.login()}"
            for body in (b"name=first", b"name=second&more=" + b"x" * 2000):
                response = await raw_http(sc.proxy_port, _post(sc, cookie, body, chunked=chunked))
                assert response.status == 200, response.raw[:200]
                assert counting.requests[-1].endswith(
                    b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if chunked else body
                )
    assert counting.per_connection() == [[1, 2]], counting.segments


async def _streaming_upstream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, release: asyncio.Event
) -> None:
    await reader.readuntil(b"\r\n\r\n")
    # No length: streamed. The head and the first bytes in one write; the rest later.
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n")
    await writer.drain()
    await release.wait()
    writer.write(b"5\r\nrest\n\r\n0\r\n\r\n")
    await writer.drain()
    await reader.read()


async def test_a_streamed_answer_sends_the_bytes_in_hand_with_its_head(tmp_path: Path) -> None:
    """The client has the head and the first bytes after one segment; the rest follows
    when the upstream sends it (nothing was held back for it)."""
    release = asyncio.Event()
    async with raw_upstream(lambda r, w: _streaming_upstream(r, w, release)) as up:
        overrides: dict[str, object] = {"proxy": {"upstream": f"http://127.0.0.1:{up.port}"}}
        async with running_sidecar(tmp_path, overrides=overrides) as sc:
            cookie = f"{sc.cookie_name}={await sc.login()}"
            reader, writer = await asyncio.open_connection("127.0.0.1", sc.proxy_port)
            try:
                request = f"GET /app/feed HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n"
                writer.write(request.encode())
                received = b""
                while b"first\n" not in received:
                    received += await asyncio.wait_for(reader.read(65536), 10)
                assert received.startswith(b"HTTP/1.1 200 "), received[:100]
                assert data_segments_in(writer.get_extra_info("socket")) == 1
                release.set()
                while not received.endswith(b"\r\n0\r\n\r\n"):
                    received += await asyncio.wait_for(reader.read(65536), 10)
                assert (
                    received.split(b"\r\n\r\n", 1)[1] == b"6\r\nfirst\n\r\n5\r\nrest\n\r\n0\r\n\r\n"
                )
            finally:
                release.set()  # (a failed check must not leave the upstream waiting)
                writer.close()


@pytest.mark.parametrize("lean_front", [True, False], ids=["lean", "aiohttp"])
async def test_a_body_sent_with_its_head_is_not_sent_again_on_a_stale_connection(
    tmp_path: Path, lean_front: bool
) -> None:
    """A PUT whose body was in hand, on an idle connection the upstream closed as it
    arrived: 502, and no second connection (the pool's rule for requests with a body)."""
    async with raw_upstream(closing_after_first_answer()) as up:
        overrides: dict[str, object] = {
            "proxy": {"upstream": f"http://127.0.0.1:{up.port}", "lean_front": lean_front}
        }
        async with running_sidecar(tmp_path, overrides=overrides) as sc:
            cookie = f"{sc.cookie_name}={await sc.login()}"
            host = f"127.0.0.1:{sc.proxy_port}"
            first = f"GET /a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n"
            assert (await raw_http(sc.proxy_port, first.encode())).status == 200
            second = (
                f"PUT /b HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
                "Content-Length: 7\r\n\r\npayload"
            )
            response = await raw_http(sc.proxy_port, second.encode())
            assert response.status == 502, response.status
            assert up.connections == 1


async def _pipelined(port: int, requests: bytes, answers: int) -> tuple[bytes, int]:
    """Send ``requests`` in one write; read until ``answers`` status lines came (or the
    connection closed): the bytes, and the data segments they came in."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(requests)
        received = b""
        while received.count(b"HTTP/1.1 ") < answers:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                break
            received += chunk
        return received, data_segments_in(writer.get_extra_info("socket"))
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("path", "status"), [("/app/page", b"401"), ("/admin/tools", b"403")], ids=["401", "403"]
)
async def test_answers_given_in_one_iteration_leave_in_one_segment(
    tmp_path: Path, path: str, status: bytes
) -> None:
    """Three pipelined requests the lean front answers at once (no session: 401; a role's
    rule: 403): three answers, in order, in one segment (each written as it was given,
    they were three)."""
    async with running_sidecar(tmp_path) as sc:
        cookie = f"{sc.cookie_name}={await sc.login()}" if status == b"403" else "x=y"
        host = f"127.0.0.1:{sc.proxy_port}"
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n"
        received, segments = await _pipelined(sc.proxy_port, request.encode() * 3, 3)
    assert received.count(b"HTTP/1.1 " + status + b" ") == 3, received[:300]
    assert received.count(b"HTTP/1.1 ") == 3
    assert segments == 1


async def test_answers_held_for_the_iteration_are_bounded_and_precede_a_close(
    tmp_path: Path,
) -> None:
    """Forty pipelined 401s, the last with ``Connection: close``: every answer comes, in
    order, before the close, at most ``_MAX_HELD`` answers to a write (a client that does
    not read is still paused by the transport, not held answers)."""
    async with running_sidecar(tmp_path) as sc:
        host = f"127.0.0.1:{sc.proxy_port}"
        one = f"GET /app/n{{}} HTTP/1.1\r\nHost: {host}\r\n{{}}\r\n"
        requests = "".join(
            one.format(i, "" if i < 39 else "Connection: close\r\n") for i in range(40)
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", sc.proxy_port)
        try:
            writer.write(requests.encode())
            received = b""
            while chunk := await asyncio.wait_for(reader.read(65536), 10):
                received += chunk  # until the sidecar closes
            segments = data_segments_in(writer.get_extra_info("socket"))
        finally:
            writer.close()
    assert received.count(b"HTTP/1.1 401 ") == 40, received[-300:]
    assert segments == -(-40 // _MAX_HELD)


async def test_an_answer_read_with_the_clients_fin_still_reaches_it(tmp_path: Path) -> None:
    """A client that half-closes after its request, its FIN read in the iteration whose
    first step answers it (the sidecar read the upstream's answer in the one before): the
    answer, held for the end of the iteration, is sent before the end of input closes the
    connection, as it was when each answer was written at once. The upstream, the client
    and the sidecar share this loop, so the script places the FIN: it shuts the client's
    side in the iteration after its answer's write (fails without eof_received's send)."""
    client: list[asyncio.StreamWriter] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        # Next iteration, before the sidecar's poll reads OK: the FIN is seen one poll
        # later, in the iteration whose first step is the one that answers the client.
        asyncio.get_running_loop().call_soon(client[0].write_eof)
        await writer.drain()
        await reader.read()

    async with raw_upstream(script) as up:
        overrides: dict[str, object] = {"proxy": {"upstream": f"http://127.0.0.1:{up.port}"}}
        async with running_sidecar(tmp_path, overrides=overrides) as sc:
            cookie = f"{sc.cookie_name}={await sc.login()}"
            host = f"127.0.0.1:{sc.proxy_port}"
            request = f"GET /a HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n"
            reader, writer = await asyncio.open_connection("127.0.0.1", sc.proxy_port)
            client.append(writer)
            try:
                writer.write(request.encode())
                received = b""
                while chunk := await asyncio.wait_for(reader.read(65536), 10):
                    received += chunk  # until the sidecar closes
            finally:
                writer.close()
    assert received.startswith(b"HTTP/1.1 200 "), received[:200]
    assert received.endswith(b"\r\n\r\nok")
