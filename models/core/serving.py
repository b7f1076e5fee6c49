"""Waitress as both services run it, with a low body limit before authentication.

Waitress reads a whole request body (spooling it to a temporary file past 512 KB) before
the application sees the request, so a limit checked by the application comes too late:
anyone could make the server write up to ``max_request_body_size`` (1 GiB by default) to
``/tmp``, a RAM disk on current Debian (issue 26, finding 9). Here the limit is checked
when the headers are complete: a request that announces more than
:data:`PREAUTH_BODY_BYTES` (or a chunked body) is answered 413 at once, and its body is
never read, unless ``credential(headers, path)`` says the request carries a valid
credential; such requests are then bounded by ``max_request_body_size``.

``credential`` runs on waitress's I/O thread, once per large request: keep it to a
signature check or one indexed lookup.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

from waitress import create_server
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer
from waitress.utilities import RequestEntityTooLarge

logger = logging.getLogger(__name__)

PREAUTH_BODY_BYTES = 64 * 1024  # a sign-in or a form: far more than any of them needs
Credential = Callable[[Mapping[str, str], str], bool]


def guarded_channel(credential: Credential, limit: int = PREAUTH_BODY_BYTES
                    ) -> type[HTTPChannel]:
    """A waitress channel class whose parser refuses, at the headers, a body over
    ``limit`` bytes that no valid credential vouches for."""

    class Parser(HTTPRequestParser):
        def parse_header(self, header_plus: bytes) -> None:
            super().parse_header(header_plus)
            if not (self.chunked or self.content_length > limit):
                return
            try:
                allowed = bool(credential(self.headers, self.path))
            except Exception:  # a failing check lets nobody in, and must not kill I/O
                logger.exception("credential check of a large request failed")
                allowed = False
            if not allowed:
                self.error = RequestEntityTooLarge(
                    f"a body over {limit} bytes needs a valid sign-in or token")
                self.body_rcv, self.content_length, self.chunked = None, 0, False
                self.connection_close = True

    class Channel(HTTPChannel):
        parser_class = Parser

    return Channel


def serve(app: Any, credential: Credential, *, limit: int = PREAUTH_BODY_BYTES,
          **options: Any) -> None:
    """``waitress.serve(app, **options)``, with :func:`guarded_channel`'s early limit."""
    server = create_server(app, **options)
    channel = guarded_channel(credential, limit)
    # One listener is the server itself; several are in its map (MultiSocketServer).
    listeners = [server] if isinstance(server, BaseWSGIServer) else \
        [d for d in server.map.values() if isinstance(d, BaseWSGIServer)]
    for listener in listeners:
        listener.channel_class = channel
    server.print_listen("Serving on http://{}:{}")
    server.run()


def bearer_token(headers: Mapping[str, str]) -> str:
    """The token of an ``Authorization: Bearer`` header in waitress's header mapping."""
    value = headers.get("AUTHORIZATION", "")
    return value[7:].strip() if value.startswith("Bearer ") else ""


def cookie(headers: Mapping[str, str], name: str) -> str:
    """The value of cookie ``name`` in waitress's header mapping ("" if absent)."""
    from http.cookies import CookieError, SimpleCookie
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get("COOKIE", ""))
    except CookieError:
        return ""
    found = jar.get(name)
    return found.value if found is not None else ""
