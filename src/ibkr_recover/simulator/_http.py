"""A small, strict HTTP/1.1 request parser and response heads.

Only what the simulator needs and nothing it can get wrong: a request line, header fields, and
an optional ``Content-Length`` body. Chunked transfer coding, obs-folded headers, a missing
``Host`` (HTTP/1.1), conflicting lengths and oversized heads or bodies are refused with
:class:`BadRequest` (the server answers 400 and closes), so a client bug shows up as a clean
error instead of a desynchronised connection.
"""

from __future__ import annotations

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

_METHOD_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
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
    end = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise BadRequest("request head too large")
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest("malformed request line")
    method, target, version = parts
    if not method or not _METHOD_CHARS.issuperset(method):
        raise BadRequest("malformed method")
    if version == b"HTTP/1.1":
        keep_alive = True
    elif version == b"HTTP/1.0":
        keep_alive = False
    else:
        raise BadRequest("unsupported HTTP version")
    if not target.startswith(b"/"):
        raise BadRequest("malformed request target")
    length = -1
    has_host = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name[-1:] in b" \t" or line[:1] in b" \t":
            raise BadRequest("malformed header field")
        name = name.lower()
        value = value.strip(b" \t")
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
            tokens = value.lower()
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
        elif name == b"host":
            has_host = True
    if version == b"HTTP/1.1" and not has_host:
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
