"""The HTTP gateway in front of TorchServe's inference API (``rws serve``, ``rws up``).

TorchServe's frontend decodes ``application/x-www-form-urlencoded`` and ``multipart/*`` bodies
itself, with Netty's form decoder, before any handler runs. A body it cannot decode (a ``%``
not followed by two hex digits, a broken multipart boundary) ends in a bare 500. That is what
``curl --data-binary @x.png`` without ``-H "Content-Type: image/png"`` sends for most PNGs: a
user mistake that must get a 4xx naming the fix. Nothing in TorchServe's configuration turns
that decoder off, and a frontend plugin cannot take over ``/predictions``.

So ``rws serve`` binds TorchServe's inference API to a private loopback port and puts this
gateway on the public one. The gateway:

* answers form and multipart bodies itself with a 415 and a JSON message naming the right
  ``Content-Type`` (the handler speaks JSON and raw image bytes only);
* answers header blocks over 7 KiB with a 431 (TorchServe's frontend allows 8 KiB), request
  targets over 4000 bytes with a 414, targets that are not a path, header values that are
  not ASCII and malformed requests with a 400, an ``Expect`` other than ``100-continue`` with
  a 417, all in JSON like every other error here;
* answers bodies over the server's size limit with a 413 without reading them whole (the
  ``Content-Length`` is checked first; chunked bodies are counted as they arrive);
* forwards everything else unchanged (method, path and query as sent, headers such as
  ``Authorization`` and ``X-RWS-*``, the body undecoded) and passes the answer back, status,
  headers and body, so clients see TorchServe's API as it is;
* answers 502 (JSON) while TorchServe cannot be reached and 504 when it does not answer in time.

It is an aiohttp server forwarding with one pooled aiohttp client session (both parse HTTP in
C: about 1 ms of CPU per request), so concurrent requests reach TorchServe concurrently and are
still batched there. It imports nothing from ``rws_hub`` (no torch in this process): run it as a
script, ``python <this file> --port 8080 --upstream http://127.0.0.1:PORT``, which is what
:func:`rws_hub.launch.torchserve.start` does.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp import http_exceptions, web, web_protocol
from yarl import URL

__all__ = [
    "FORM_TYPES",
    "HOP_BY_HOP",
    "MAX_HEADER_BYTES",
    "Gateway",
    "main",
    "media_type",
    "serve",
]

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/")
"""Media types (``multipart/`` as a prefix) that TorchServe's frontend would decode itself."""

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers that belong to one connection (RFC 9110, 7.6.1) and are never forwarded."""

_NOT_FORWARDED = HOP_BY_HOP | {"host", "expect", "content-length"}


MAX_HEADER_BYTES = 7 * 1024
"""The largest header block forwarded (names, values and line framing, in bytes). TorchServe's
frontend (Netty) refuses more than 8 KiB of headers, and a refusal while the gateway is still
sending can reach it as a broken connection: a header block over this limit gets a 431 here."""

MAX_TARGET_BYTES = 4000
"""The longest request target (path and query) forwarded: TorchServe's frontend refuses a
request line over 4096 bytes with a message that names nothing, so a longer one gets a 414."""

MAX_HEADER_LINE_BYTES = 64 * 1024
MAX_HEADER_COUNT = 1000
"""A header line or header count over these is refused by the HTTP parser itself (also with a
431), before the gateway sees the request."""


def media_type(value: bytes | str | None) -> str:
    """The media type of a ``Content-Type`` value, lower case, without parameters."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return (value or "").split(";", 1)[0].strip().lower()


def _is_form(ctype: str) -> bool:
    return ctype == FORM_TYPES[0] or ctype.startswith(FORM_TYPES[1])


def _form_message(ctype: str) -> str:
    # the handler's own refusal (rws_hub/inference/parsing.py, RequestParser.parse) says the
    # same for a form body that gets past TorchServe's decoder (KServe, --no-gateway); this
    # script imports no rws_hub, so the text lives in both places
    if ctype.startswith("multipart/"):
        how = f"as {ctype[:40]} (a form upload)"
    else:
        how = (
            "as a form (Content-Type: application/x-www-form-urlencoded, what curl "
            "--data-binary sends unless told otherwise)"
        )
    return (
        f"the body was sent {how}; send a raw image with Content-Type: image/png (or "
        "image/jpeg, ...) or a JSON request with Content-Type: application/json"
    )


class _TooLarge(Exception):
    pass


class Gateway:
    """The gateway's request handler, forwarding to ``upstream`` (``http://127.0.0.1:PORT``).

    Args:
        upstream: TorchServe's inference address.
        max_body_bytes: the largest request body forwarded (TorchServe's ``max_request_size``).
        timeout_s: how long an answer may take (TorchServe's response timeout plus a margin).
        max_connections: upstream connections kept at most (requests beyond wait for one).
    """

    def __init__(
        self,
        upstream: str,
        *,
        max_body_bytes: int,
        timeout_s: float = 130.0,
        max_connections: int = 256,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.max_body_bytes = int(max_body_bytes)
        self.timeout_s = float(timeout_s)
        self.max_connections = int(max_connections)
        self._session: Any = None

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=5.0),
                auto_decompress=False,  # bytes pass through as TorchServe sent them
                # only the client's own headers (no Content-Type guessed for a body without one)
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                trust_env=False,  # never route loopback traffic through an HTTP(S)_PROXY
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        refused = self._refusal(request)
        if refused is not None:
            if request.body_exists and not request.content.is_eof():
                # the body is not read: close after the answer rather than parse the body as
                # the next request (a client that waited for 100 Continue never sends it)
                refused.force_close()
            return refused
        if request.headers.get("Expect") and request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            body = await self._read_body(request)
        except _TooLarge:
            refused = self._too_large()
            refused.force_close()
            return refused
        except (aiohttp.ClientError, web.HTTPException, OSError) as exc:
            return _answer(400, f"the request body could not be read: {str(exc)[:200]}")
        await self.open()
        try:
            async with self._session.request(
                request.method,
                URL(self.upstream + request.raw_path, encoded=True),  # the target as sent
                headers=list(_forwarded(request.raw_headers)),
                data=body,
                allow_redirects=False,
            ) as upstream:
                answer = await upstream.read()
                # the handler's reason phrase (its error, in printable ASCII) passes too
                response = web.Response(status=upstream.status, reason=upstream.reason, body=answer)
                response.headers.clear()
                for key, value in upstream.raw_headers:
                    name = key.decode("latin-1")
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        response.headers.add(name, value.decode("utf-8", "replace"))
                return response
        except aiohttp.ClientError:  # before TimeoutError: a connect timeout is both
            return _answer(502, "the model server is not reachable (starting or stopped)")
        except asyncio.TimeoutError:
            return _answer(504, "the model server did not answer in time")

    def _too_large(self) -> web.Response:
        return _answer(
            413, f"request body is above the server's limit of {self.max_body_bytes} bytes"
        )

    def _refusal(self, request: web.BaseRequest) -> web.Response | None:
        """The gateway's own answer to a request it does not forward (None: forward it)."""
        refused = _refusal(request)
        declared = request.content_length
        if refused is None and declared is not None and declared > self.max_body_bytes:
            refused = self._too_large()
        return refused

    async def _read_body(self, request: Any) -> bytearray:
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > self.max_body_bytes:
                raise _TooLarge
        return body


def _refusal(request: web.BaseRequest) -> web.Response | None:
    """The gateway's answer to a request whose head it does not forward (None: forward it)."""
    size = sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
    if size > MAX_HEADER_BYTES:
        return _answer(
            431,
            f"request headers are {size} bytes, above the server's limit of "
            f"{MAX_HEADER_BYTES} (a long signature mix goes in the JSON body)",
        )
    target = request.raw_path
    if not target.startswith("/"):  # absolute-form, authority-form (CONNECT), asterisk-form
        return _answer(
            400,
            "the request target must be a path such as /predictions/<model> (absolute, "
            "authority and asterisk forms are not served)",
        )
    if len(target) > MAX_TARGET_BYTES:
        return _answer(
            414,
            f"the request target is {len(target)} bytes, above the server's limit of "
            f"{MAX_TARGET_BYTES}; send the mix in the body or the X-RWS-Signatures header",
        )
    expect = request.headers.get("Expect")
    if expect is not None and expect.strip().lower() != "100-continue":
        return _answer(417, f"unsupported Expect header {expect[:40]!r}; only 100-continue")
    ctype = media_type(request.headers.get("Content-Type"))
    if _is_form(ctype):
        return _answer(415, _form_message(ctype))
    for key, value in request.raw_headers:
        if not value.isascii() and key.decode("latin-1").lower() not in _NOT_FORWARDED:
            # the forwarding client would re-encode the bytes
            return _answer(
                400,
                f"header {key.decode('latin-1')[:40]!r} holds non-ASCII bytes; header values "
                "must be ASCII (send names and text in a JSON body instead)",
            )
    return None


def _forwarded(headers: Iterable[tuple[bytes, bytes]]) -> Iterable[tuple[str, str]]:
    """The request headers TorchServe gets: all but hop-by-hop ones, ``Host`` (the client sets
    the upstream's), ``Expect`` (the body is complete) and the framing (recomputed).

    Values are ASCII (:func:`_refusal` answers the rest), so TorchServe gets them byte for
    byte.
    """
    for key, value in headers:
        name = key.decode("latin-1")
        if name.lower() not in _NOT_FORWARDED:
            yield name, value.decode("ascii")


def _answer(status: int, message: str) -> web.Response:
    """A JSON error in the handler's shape: ``{"error": ..., "status": ...}``."""
    return web.json_response({"error": message, "status": status}, status=status)


def _server(gateway: Gateway) -> Any:
    """aiohttp's low-level server for ``gateway``, answering the requests its HTTP parser
    refuses with JSON like every other error here (aiohttp's own answers are plain text): a 431
    for a header line or count over the limits, a 400 for anything malformed."""

    class JSONErrors(web_protocol.RequestHandler):
        def handle_error(
            self,
            request: Any,
            status: int = 500,
            exc: BaseException | None = None,
            message: str | None = None,
        ) -> web.StreamResponse:
            text = str(exc)
            if isinstance(exc, http_exceptions.LineTooLong) and "Status line" in text:
                status = 414
                error = (
                    f"the request line is over {MAX_HEADER_LINE_BYTES} bytes (the server's "
                    f"limit for the target is {MAX_TARGET_BYTES})"
                )
            elif isinstance(exc, http_exceptions.LineTooLong) or "many headers" in text:
                status = 431
                error = (
                    "a request header is too long, or there are too many headers (limits: "
                    f"{MAX_HEADER_BYTES} bytes in all, {MAX_HEADER_COUNT} headers)"
                )
            elif status < 500:
                error = "invalid HTTP request (malformed request line or headers)"
            else:
                self.log_exception("Error handling request", exc_info=exc)
                error = "the gateway failed on this request; see gateway.out in the run directory"
                status = 502
            response = _answer(status, error)
            response.force_close()
            return response

    class Server(web.Server):
        def __call__(self) -> web_protocol.RequestHandler:
            return JSONErrors(self, loop=self._loop, **self._kwargs)

    return Server(
        gateway,
        max_line_size=MAX_HEADER_LINE_BYTES,
        max_field_size=MAX_HEADER_LINE_BYTES,
        max_headers=MAX_HEADER_COUNT,
        auto_decompress=False,  # a Content-Encoding is TorchServe's (and the handler's) to judge
        # after an answer that left the body unread (413, 415, ...), discard what the client
        # still sends for 2 s before closing (aiohttp waits 10 s; a client that waits for
        # 100 Continue sends nothing)
        lingering_time=2.0,
        access_log=None,
    )


async def serve(gateway: Gateway, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve ``gateway`` on ``host:port`` until ``stop`` is set."""
    await gateway.open()
    runner = web.ServerRunner(_server(gateway), handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
        await stop.wait()
    finally:
        await runner.cleanup()
        await gateway.close()


def main(argv: list[str] | None = None) -> int:
    """Run the gateway until SIGTERM/SIGINT (``python gateway.py --help``)."""
    import signal
    from pathlib import Path

    if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # run as a script: its neighbours must not shadow other modules
    p = argparse.ArgumentParser(
        prog="gateway.py",
        description="Forward a public inference port to TorchServe's private one; answer form "
        "and multipart bodies (415), oversized bodies (413) and headers (431) with JSON.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8090")
    p.add_argument("--max-body-bytes", type=int, required=True)
    p.add_argument("--timeout", type=float, default=130.0, help="seconds an answer may take")
    args = p.parse_args(argv)
    gateway = Gateway(args.upstream, max_body_bytes=args.max_body_bytes, timeout_s=args.timeout)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(gateway, args.host, args.port, stop)

    try:
        import uvloop  # libuv's event loop, when installed: less CPU per request
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
