"""HTTP transport: Triton's generate extension. Stdlib only (http.client), so
the SSE stream is read incrementally as the server flushes it."""

from __future__ import annotations

import dataclasses
import http.client
import json
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

    def feed(self, raw: bytes) -> list[str]:
        self._buf += raw
        events = []
        while True:
            cut = min((i for i in (self._buf.find(b"\r"), self._buf.find(b"\n")) if i >= 0),
                      default=-1)
            if cut < 0:
                break
            # A lone "\r" at the end may be the first half of "\r\n": wait.
            if self._buf[cut:cut + 1] == b"\r" and cut + 1 == len(self._buf):
                break
            end = cut + 2 if self._buf[cut:cut + 2] == b"\r\n" else cut + 1
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


def _post(url: str, path: str, body: dict, timeout: float | None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", parts.path.rstrip("/") + path, body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        return conn, conn.getresponse()
    except TimeoutError as e:
        conn.close()
        raise ClientError("DEADLINE_EXCEEDED", str(e) or "timed out") from None
    except OSError as e:
        conn.close()
        raise ClientError("UNAVAILABLE", f"cannot reach {url}: {e}") from None


def generate_http(url: str, model: str, request: GenerateRequest, *,
                  timeout: float | None = None) -> Result:
    """POST /v2/models/<model>/generate (stream=False): one JSON answer."""
    request = dataclasses.replace(request, stream=False)
    t_start = time.perf_counter()
    conn, resp = _post(url, f"/v2/models/{model}/generate", request.http_body(), timeout)
    try:
        body = resp.read()
    except TimeoutError:
        raise ClientError("DEADLINE_EXCEEDED", "timed out reading the response") from None
    finally:
        conn.close()
    arrival = time.perf_counter()
    if resp.status >= 400:
        raise error_from_http(resp.status, body)
    try:
        obj = json.loads(body)
    except ValueError:
        raise ClientError("UNKNOWN", f"non-JSON response: {body[:200]!r}") from None
    chunk = chunk_from_outputs(_check_payload(obj), arrival, final=True)
    return Result.from_chunks([chunk] if chunk else [], t_start)


def stream_http(url: str, model: str, request: GenerateRequest, *,
                timeout: float | None = None) -> Iterator[Chunk]:
    """POST /v2/models/<model>/generate_stream and yield each SSE event as a
    Chunk the moment it arrives. Honours request.stream (False gives one
    event with the whole text). `timeout` applies to each socket read."""
    conn, resp = _post(url, f"/v2/models/{model}/generate_stream", request.http_body(), timeout)
    try:
        if resp.status >= 400:
            raise error_from_http(resp.status, resp.read())
        parser = SSEParser()
        while True:
            # read1 returns whatever has arrived (de-chunked) without waiting
            # to fill the buffer, which is what makes this incremental.
            raw = resp.read1(65536)
            if not raw:
                return
            arrival = time.perf_counter()
            for payload in parser.feed(raw):
                try:
                    obj = json.loads(payload)
                except ValueError:
                    raise ClientError("UNKNOWN", f"bad SSE payload: {payload[:200]!r}") from None
                chunk = chunk_from_outputs(_check_payload(obj), arrival)
                if chunk is not None:
                    yield chunk
    except TimeoutError:
        raise ClientError("DEADLINE_EXCEEDED", "timed out waiting for the stream") from None
    except (OSError, http.client.HTTPException) as e:
        raise ClientError("UNAVAILABLE", f"stream broken: {e!r}") from None
    finally:
        conn.close()  # also how an abandoned stream tells the server to stop
