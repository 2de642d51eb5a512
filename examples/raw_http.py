"""Raw HTTP/1.1 server on ``asyncio.start_server``: no framework, just streams.

* Request line and headers are parsed by hand; anything malformed gets a ``400`` JSON
  error and the connection is closed.
* Responses are JSON with a ``Content-Length``. Connections are persistent by default on
  HTTP/1.1 (keep-alive, pipelining works naturally) and closed after the response when the
  client sends ``Connection: close`` (or speaks HTTP/1.0 without ``keep-alive``).
* Slowloris protection: the whole request head (request line + headers) must arrive within
  ``header_timeout`` seconds of the server starting to wait for it; otherwise the connection
  is dropped. The same limit bounds an idle keep-alive connection and a request body.

Routes: ``GET /`` (hello), ``/echo`` (any method: echoes method, path, query, headers,
body and the request's number on its connection), anything else ``404``.

Run it: ``python examples/raw_http.py [--port N]`` or
``python -m ferroloop examples/raw_http.py [--port N]``; it serves until Ctrl-C.
For tests: ``server = await start(host, port, header_timeout)``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
SERVER_NAME = "raw-http-example"

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VERSION = re.compile(rb"^HTTP/1\.[01]$")


class HTTPError(Exception):
    def __init__(self, status: HTTPStatus, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names
    body: bytes = b""

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


def parse_head(head: bytes) -> Request:
    """Parse ``request-line CRLF *(header CRLF) CRLF``; raise HTTPError(400) if malformed."""
    lines = head.split(b"\r\n")
    # head ends with CRLFCRLF: the last two split items are empty.
    if len(lines) < 3 or lines[-1] or lines[-2]:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "incomplete request head")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise HTTPError(HTTPStatus.BAD_REQUEST, "invalid method")
    if not target.startswith(b"/") or any(c <= 0x20 or c == 0x7F for c in target):
        raise HTTPError(HTTPStatus.BAD_REQUEST, "invalid request target")
    if not _VERSION.match(version):
        raise HTTPError(HTTPStatus.BAD_REQUEST, "unsupported HTTP version")
    headers: dict[str, str] = {}
    for line in lines[1:-2]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise HTTPError(HTTPStatus.BAD_REQUEST, "malformed header line")
        try:
            text = value.strip(b" \t").decode("latin-1")
        except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes anything
            raise HTTPError(HTTPStatus.BAD_REQUEST, "bad header value") from exc
        key = name.decode("ascii").lower()
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    request = Request(method.decode("ascii"), target.decode("ascii"), version.decode("ascii"))
    request.headers = headers
    if request.version == "HTTP/1.1" and "host" not in headers:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "missing Host header")
    return request


def render(status: HTTPStatus, payload: object, *, keep_alive: bool) -> bytes:
    body = json.dumps(payload, sort_keys=True).encode()
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        f"Server: {SERVER_NAME}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


def route(request: Request, number: int) -> tuple[HTTPStatus, object]:
    url = urlsplit(request.target)
    if url.path == "/" and request.method in ("GET", "HEAD"):
        return HTTPStatus.OK, {"message": "hello"}
    if url.path == "/echo":
        return HTTPStatus.OK, {
            "method": request.method,
            "path": url.path,
            "query": parse_qs(url.query),
            "headers": request.headers,
            "body": request.body.decode("utf-8", "replace"),
            "request_number": number,
        }
    return HTTPStatus.NOT_FOUND, {"error": "not found", "path": url.path}


async def read_request(reader: asyncio.StreamReader, header_timeout: float) -> Request | None:
    """Read one request; None on a clean EOF between requests. Raises TimeoutError when the
    head (then the body) does not arrive within ``header_timeout``."""
    async with asyncio.timeout(header_timeout):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None
            raise HTTPError(HTTPStatus.BAD_REQUEST, "connection closed mid-request") from exc
        except asyncio.LimitOverrunError as exc:
            raise HTTPError(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large"
            ) from exc
    request = parse_head(head)
    if "transfer-encoding" in request.headers:
        raise HTTPError(HTTPStatus.NOT_IMPLEMENTED, "transfer-encoding not supported")
    length_text = request.headers.get("content-length", "0")
    if not length_text.isdigit():
        raise HTTPError(HTTPStatus.BAD_REQUEST, "invalid Content-Length")
    length = int(length_text)
    if length > MAX_BODY:
        raise HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
    if length:
        async with asyncio.timeout(header_timeout):
            try:
                request.body = await reader.readexactly(length)
            except asyncio.IncompleteReadError as exc:
                raise HTTPError(HTTPStatus.BAD_REQUEST, "truncated body") from exc
    return request


async def handle_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, header_timeout: float
) -> None:
    number = 0
    try:
        while True:
            try:
                request = await read_request(reader, header_timeout)
            except TimeoutError:
                return  # slowloris or idle keep-alive: drop without a word
            except HTTPError as exc:
                payload = {"error": exc.status.phrase, "detail": exc.detail}
                writer.write(render(exc.status, payload, keep_alive=False))
                await writer.drain()
                return
            if request is None:
                return
            number += 1
            status, payload = route(request, number)
            keep_alive = request.keep_alive
            writer.write(render(status, payload, keep_alive=keep_alive))
            await writer.drain()
            if not keep_alive:
                return
    except (ConnectionError, OSError):
        pass  # the peer went away; nothing to tell it
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def start(host: str, port: int, header_timeout: float = 10.0) -> asyncio.Server:
    """Start serving on (host, port) (port 0: any free port); the caller closes the server."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handle_connection(reader, writer, header_timeout)

    return await asyncio.start_server(on_connect, host, port, limit=MAX_HEAD)


async def serve(host: str, port: int, header_timeout: float) -> None:
    server = await start(host, port, header_timeout)
    bound = server.sockets[0].getsockname()
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"serving on http://{bound[0]}:{bound[1]} ({loop_name} loop)", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--header-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.header_timeout))


if __name__ == "__main__":
    main()
