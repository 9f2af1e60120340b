"""A small, strict HTTP/1.1 request parser and response heads.

Only what the simulator needs and nothing it can get wrong: a request line, header fields, and
an optional ``Content-Length`` body. Chunked transfer coding, obs-folded headers, a missing
``Host`` (HTTP/1.1), conflicting lengths and oversized heads or bodies are refused with
:class:`BadRequest` (the server answers 400 and closes), so a client bug shows up as a clean
error instead of a desynchronised connection.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = [
    "MAX_BODY",
    "MAX_HEAD",
    "BadRequest",
    "Request",
    "parse_request",
    "reason_phrase",
    "response_head",
]

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024

_REQUEST_LINE = re.compile(rb"([A-Z]+) (/[^ \x00-\x1f]*) HTTP/1\.([01])")
_ANY_VERSION = re.compile(rb"[A-Z]+ /[^ ]* HTTP/[0-9]\.[0-9]")
_FIELDS = re.compile(rb"(?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n]*)*")
_WANTED = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection|host):[ \t]*([^\r\n]*?)[ \t]*(?=\r\n)"
)
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class BadRequest(Exception):
    """The bytes on the connection are not a request this server accepts."""


class Request:
    """One parsed request; ``path`` is percent-decoded, ``query`` raw."""

    __slots__ = ("body", "keep_alive", "method", "path", "query")

    def __init__(self, method: str, path: str, query: str, body: bytes, keep_alive: bool) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.body = body
        self.keep_alive = keep_alive


def parse_request(buf: bytearray) -> tuple[Request, int] | None:
    """Parse the first request in ``buf``.

    Returns
    -------
    tuple or None
        ``(request, consumed)`` where ``consumed`` is the number of bytes it occupied, or
        ``None`` when the request is not complete yet.

    Raises
    ------
    BadRequest
        The request is malformed, uses a feature this server refuses, or is too large.
    """
    if buf and not 0x41 <= buf[0] <= 0x5A:
        # Not a method's first letter: a TLS ClientHello sent to this plain-HTTP port, say.
        # Refused at once, as HTTP servers do, instead of waiting for a head that never comes.
        raise BadRequest("not an HTTP request")
    end = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise BadRequest("request head too large")
        return None
    # Regular expressions rather than a loop over the header lines: the whole head is
    # checked and searched in C, which halves the parser's cost per request.
    head = bytes(buf[:end])
    line_end = head.find(b"\r\n")
    if line_end < 0:
        line_end = len(head)
    line = _REQUEST_LINE.fullmatch(head, 0, line_end)
    if line is None:
        if _ANY_VERSION.fullmatch(head, 0, line_end):
            raise BadRequest("unsupported HTTP version")
        raise BadRequest("malformed request line")
    method, target, minor = line.groups()
    fields = head[line_end:]
    if not _FIELDS.fullmatch(fields):
        raise BadRequest("malformed header field")
    keep_alive = minor == b"1"
    length = -1
    has_host = False
    for name, value in _WANTED.findall(fields.lower() + b"\r\n"):
        if name == b"content-length":
            if not value.isdigit():
                raise BadRequest("malformed Content-Length")
            n = int(value)
            if length not in (-1, n):
                raise BadRequest("conflicting Content-Length")
            length = n
        elif name == b"transfer-encoding":
            raise BadRequest("Transfer-Encoding is not supported")
        elif name == b"connection":
            if b"close" in value:
                keep_alive = False
            elif b"keep-alive" in value:
                keep_alive = True
        else:
            has_host = True
    if minor == b"1" and not has_host:
        raise BadRequest("missing Host header")
    if length > MAX_BODY:
        raise BadRequest("request body too large")
    start = end + 4
    stop = start + max(length, 0)
    if len(buf) < stop:
        return None
    raw_path, _, query = target.partition(b"?")
    path = raw_path.decode("latin-1")
    if "%" in path:
        path = unquote(path)
    request = Request(
        method.decode("ascii"), path, query.decode("latin-1"), bytes(buf[start:stop]), keep_alive
    )
    return request, stop


def reason_phrase(status: int) -> str:
    """The standard reason phrase of a status code."""
    return _REASONS.get(status, "Unknown")


def response_head(status: int, length: int | None, *, close: bool = False) -> bytes:
    """The status line and headers of a JSON response of ``length`` body bytes.

    ``length=None`` leaves ``Content-Length`` out: the body ends when the connection closes.
    """
    reason = reason_phrase(status)
    connection = b"Connection: close\r\n" if close else b""
    size = b"" if length is None else b"Content-Length: %d\r\n" % length
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n%s%s\r\n" % (
        status,
        reason.encode("ascii"),
        size,
        connection,
    )
