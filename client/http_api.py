"""HTTP transport: Triton's generate extension. Stdlib only (http.client), so
the SSE stream is read incrementally as the server flushes it."""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import time
from typing import Iterator
from urllib.parse import urlsplit

from .request import Chunk, ClientError, GenerateRequest, Result, chunk_from_outputs, code_from_message

# HTTP status -> the gRPC-style code names ClientError uses.
_HTTP_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class SSEParser:
    """Incremental server-sent-events parser: feed() raw bytes in pieces of
    any size and get back the `data` payload of each completed event."""

    def __init__(self):
        self._buf = b""
        self._data: list[str] = []
        self._skip_lf = False   # the last piece ended in "\r": a "\n" first in the next is its end too

    def feed(self, raw: bytes) -> list[str]:
        if self._skip_lf and raw:
            raw = raw[1:] if raw[:1] == b"\n" else raw
            self._skip_lf = False
        self._buf += raw
        events = []
        while True:
            cut = min((i for i in (self._buf.find(b"\r"), self._buf.find(b"\n")) if i >= 0),
                      default=-1)
            if cut < 0:
                break
            if self._buf[cut:cut + 2] == b"\r\n":
                end = cut + 2
            else:
                end = cut + 1
                # A "\r" ends its line at once (a bare CR is a line end too, and the event it may
                # complete must not wait for more bytes); a "\n" that follows it is skipped then.
                self._skip_lf = self._buf[cut:end] == b"\r" and end == len(self._buf)
            # Line breaks never occur inside a UTF-8 sequence, so decoding
            # whole lines is safe even if a character was split across reads.
            line = self._buf[:cut].decode("utf-8")
            self._buf = self._buf[end:]
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> str | None:
        if not line:  # blank line ends an event
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return data
        if line.startswith(":"):  # comment / keep-alive
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None  # event:, id:, retry: carry nothing we use


def error_from_http(status: int, body: bytes) -> ClientError:
    """Triton answers {"error": "..."}; generate_stream wraps it as an SSE
    `data:` line even on a 4xx. Fall back to the raw body otherwise."""
    text = body.decode("utf-8", errors="replace").strip()
    message = text or http.client.responses.get(status, "")
    payloads = SSEParser().feed(body + b"\n\n") if text.startswith("data:") else [text]
    for payload in payloads:
        try:
            obj = json.loads(payload)
        except ValueError:
            continue
        if isinstance(obj, dict) and "error" in obj:
            message = str(obj["error"])
            break
    code = _HTTP_CODES.get(status, "UNKNOWN" if status < 400 else f"HTTP_{status}")
    # Triton answers 400 for every model error: its message says which kind it was.
    return ClientError(code_from_message(message) or code, message, http_status=status)


def _check_payload(obj) -> dict:
    """A 200 response can still carry {"error": ...}, e.g. generate on a model
    that sent several responses, or an error midway through a stream."""
    if not isinstance(obj, dict):
        raise ClientError("UNKNOWN", f"unexpected response: {obj!r}")
    if "error" in obj:
        message = str(obj["error"])
        raise ClientError(code_from_message(message) or "UNKNOWN", message)
    return obj


class _Deadline:
    """The whole request's time limit (None: none)."""

    def __init__(self, timeout: float | None):
        self.timeout = timeout
        self.end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left; raises DEADLINE_EXCEEDED once none are."""
        if self.end is None:
            return None
        left = self.end - time.monotonic()
        if left <= 0:
            raise ClientError("DEADLINE_EXCEEDED", f"no complete response within {self.timeout}s")
        return left


def _post(url: str, path: str, body: dict, deadline: _Deadline) -> tuple[http.client.HTTPConnection, socket.socket, http.client.HTTPResponse]:
    """Send the request and read the status line and headers, all within the deadline. Returns
    the connection, its socket (to set the time left before each later read) and the response."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port
    except ValueError as e:   # "localhost:abc"
        raise ClientError("INVALID_ARGUMENT", f"bad url {url!r}: {e}") from None
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname, port, timeout=deadline.remaining())
    try:
        conn.connect()
        sock = conn.sock
        sock.settimeout(deadline.remaining())
        conn.request("POST", parts.path.rstrip("/") + path, body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        sock.settimeout(deadline.remaining())
        return conn, sock, conn.getresponse()
    except ClientError:
        conn.close()
        raise
    except TimeoutError as e:
        conn.close()
        raise ClientError("DEADLINE_EXCEEDED", str(e) or "timed out") from None
    except (OSError, http.client.HTTPException) as e:  # refused, reset, bad status line, ...
        conn.close()
        raise ClientError("UNAVAILABLE", f"cannot reach {url}: {e!r}") from None


def generate_http(url: str, model: str, request: GenerateRequest, *,
                  timeout: float | None = None) -> Result:
    """Non-streaming generation (stream=False): one response with the whole text.

    Sent to generate_stream (one SSE event) rather than Triton's /generate, so that it shares
    stream_http's whole-request deadline and its checks of a broken or unfinished reply.
    Note: Triton 2.51 notices a client that went away only when it writes to it, so a timeout or
    disconnect before this one event does NOT cancel the request on the server (it runs to its
    end); over HTTP only a streamed request is cancelled that way, after its first event. Use
    gRPC when abandoned non-streaming requests must stop at once."""
    request = dataclasses.replace(request, stream=False)
    t_start = time.perf_counter()
    chunks = stream_http(url, model, request, timeout=timeout)
    try:
        return Result.from_chunks(chunks, t_start)
    finally:
        chunks.close()


def stream_http(url: str, model: str, request: GenerateRequest, *,
                timeout: float | None = None) -> Iterator[Chunk]:
    """POST /v2/models/<model>/generate_stream and yield each SSE event as a
    Chunk the moment it arrives. Honours request.stream (False gives one
    event with the whole text). `timeout` bounds the whole stream, as over
    gRPC. Closing the generator early (or a timeout) closes the connection;
    Triton cancels the request when it next writes to it (so only after the
    first event has gone out: see generate_http).

    A stream that breaks (truncated body, reset) or ends before the response
    that carries finish_reason raises ClientError UNAVAILABLE."""
    deadline = _Deadline(timeout)
    conn, sock, resp = _post(url, f"/v2/models/{model}/generate_stream", request.http_body(), deadline)
    try:
        if resp.status >= 400:
            raise error_from_http(resp.status, resp.read())
        parser = SSEParser()
        finished = False
        while True:
            sock.settimeout(deadline.remaining())
            # read1 returns whatever has arrived (de-chunked) without waiting
            # to fill the buffer, which is what makes this incremental.
            raw = resp.read1(65536)
            if not raw:
                break
            arrival = time.perf_counter()
            for payload in parser.feed(raw):
                try:
                    obj = json.loads(payload)
                except ValueError:
                    raise ClientError("UNKNOWN", f"bad SSE payload: {payload[:200]!r}") from None
                chunk = chunk_from_outputs(_check_payload(obj), arrival)
                if chunk is not None:
                    finished = finished or chunk.finish_reason is not None
                    yield chunk
        # Without finish_reason asked for, the end of the body is all there is to go by.
        if request.return_finish_reason and not finished:
            raise ClientError("UNAVAILABLE", "the stream ended before its final response")
    except TimeoutError:
        raise ClientError("DEADLINE_EXCEEDED", f"no complete response within {timeout}s") from None
    except (OSError, http.client.HTTPException, ValueError) as e:  # reset, IncompleteRead, bad chunk
        raise ClientError("UNAVAILABLE", f"stream broken: {e!r}") from None
    finally:
        conn.close()  # also how an abandoned stream tells the server to stop
        resp.close()
