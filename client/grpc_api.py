"""gRPC transport. The model is decoupled, so every call (streaming or not)
goes through Triton's bidirectional ModelStreamInfer RPC."""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
import time
from typing import AsyncIterator, Iterator

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from .request import Chunk, ClientError, GenerateRequest, Result, chunk_from_outputs, code_from_bare_text

_OUTPUTS = ("text_output", "finish_reason", "cumulative_logprob", "logprobs",
            "num_input_tokens", "num_output_tokens")


def build_grpc_inputs(request: GenerateRequest) -> list[grpcclient.InferInput]:
    """Every tensor has shape [1] because the model has max_batch_size 0."""
    inputs = []
    for name, dtype, value in request.input_values():
        tensor = grpcclient.InferInput(name, [1], dtype)
        np_dtype = np.object_ if dtype == "BYTES" else np.bool_
        tensor.set_data_from_numpy(np.array([value], dtype=np_dtype))
        inputs.append(tensor)
    return inputs


def error_from_grpc(exc: Exception) -> ClientError:
    if isinstance(exc, ClientError):
        return exc
    if isinstance(exc, InferenceServerException):
        # status() is "StatusCode.X" for RPC-level failures and None for an
        # error the model returned inside the stream (Triton sends only text).
        # The model's own messages say what kind of error it was (see code_from_bare_text).
        status = exc.status()
        message = exc.message() or str(exc)
        code = str(status).rsplit(".", 1)[-1] if status else code_from_bare_text(message)
        return ClientError(code, message)
    if isinstance(exc, grpc.RpcError):  # the aio client lets these through
        return ClientError(exc.code().name, exc.details() or str(exc))
    return ClientError("UNKNOWN", str(exc))


def _parse_result(result: grpcclient.InferResult) -> tuple[Chunk | None, bool]:
    """(chunk or None for an empty response, is-final-response)."""
    arrival = time.perf_counter()
    response = result.get_response()
    final = "triton_final_response" in response.parameters and \
        response.parameters["triton_final_response"].bool_param
    outputs = {name: result.as_numpy(name) for name in _OUTPUTS}
    outputs = {k: v.reshape(-1).tolist() for k, v in outputs.items() if v is not None}
    return chunk_from_outputs(outputs, arrival, final), final


def _stream_request(model: str, request: GenerateRequest) -> dict:
    return dict(model_name=model, inputs=build_grpc_inputs(request), request_id=request.request_id)


# ---------------------------------------------------------------- threads


_CLOSED = object()  # queue sentinel: the stream was closed


class GrpcStream(Iterator[Chunk]):
    """An iterator over one request's chunks that can be closed early.

    The RPC starts on the first next(). close() (or leaving a `with` block, or
    contextlib.closing) stops tritonclient's stream thread and cancels the
    request on the server unless it already ended; it is safe to call twice and
    from another thread (a waiting next() then ends). tritonclient's stream
    thread is not a daemon: an iterator left open keeps the process alive until
    the stream deadline, so close it when you stop early."""

    def __init__(self, url: str, model: str, request: GenerateRequest, timeout: float | None = None):
        self._url, self._model, self._request, self._timeout = url, model, request, timeout
        self._responses: queue.Queue = queue.Queue()
        self._client: grpcclient.InferenceServerClient | None = None
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        self._finished = False   # the server has ended the request (final response or error)

    def __iter__(self) -> "GrpcStream":
        return self

    def __enter__(self) -> "GrpcStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _start(self) -> None:
        responses = self._responses  # the callback must not hold a reference to self
        with self._lock:
            if self._closed:
                return
            self._started = True
            try:
                self._client = grpcclient.InferenceServerClient(self._url)
                self._client.start_stream(callback=lambda result, error: responses.put((result, error)),
                                          stream_timeout=self._timeout)
                # Ask for the flags-only final response too, so we always learn the end.
                self._client.async_stream_infer(**_stream_request(self._model, self._request),
                                                enable_empty_final_response=True)
            except Exception as e:
                client, self._client = self._client, None
                self._closed = True
                if client is not None:
                    _stop_stream(client, cancel=True)
                raise error_from_grpc(self._cause_reported_to_callback(e)) from None

    def _cause_reported_to_callback(self, e: Exception) -> Exception:
        """When the stream failed before the request was queued (no server at the address: the
        usual case), tritonclient refuses the request with a generic message ("The stream is no
        longer in valid state, the error detail is reported through provided callback"), status
        None, which would read as UNKNOWN; the cause (UNAVAILABLE: failed to connect) is in the
        callback's queue, or about to be (its thread marks the stream inactive first). Other
        errors are raised as they are, without waiting."""
        if not isinstance(e, InferenceServerException) or "no longer in valid state" not in (e.message() or ""):
            return e
        try:
            result, error = self._responses.get(timeout=2.0)
        except queue.Empty:
            return e
        return error if error is not None else e

    def __next__(self) -> Chunk:
        if not self._started:
            self._start()
        while True:
            if self._closed:
                raise StopIteration
            try:
                # The stream deadline normally fires first; this is a backstop.
                item = self._responses.get(timeout=None if self._timeout is None else self._timeout + 5)
            except queue.Empty:
                self.close()
                raise ClientError("DEADLINE_EXCEEDED", f"no response within {self._timeout}s") from None
            if item is _CLOSED:
                raise StopIteration
            result, error = item
            if error is not None:
                self._finished = True  # the server has ended the request
                self.close()
                raise error_from_grpc(error)
            try:
                chunk, final = _parse_result(result)
            except Exception as e:
                self.close()
                raise error_from_grpc(e) from None
            if final:
                self._finished = True
                self.close()
            if chunk is not None:
                return chunk
            if final:
                raise StopIteration

    def close(self) -> None:
        """Stop the stream; cancels the request on the server unless it has ended."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            client, self._client = self._client, None
        self._responses.put(_CLOSED)
        if client is not None:
            _stop_stream(client, cancel=not self._finished)


def _stop_stream(client, cancel: bool) -> None:
    """Stop the client's stream (cancelling its request on the server if `cancel`) and close it.
    tritonclient 2.51's cancelling stop never ends the stream's request queue, so gRPC's thread
    that feeds requests from it would wait on it for good: one thread (and its memory) left per
    cancelled stream, for the life of the process. The end marker is put in here."""
    stream = getattr(client, "_stream", None)
    try:
        client.stop_stream(cancel_requests=cancel)
    finally:
        try:
            requests = getattr(stream, "_request_queue", None)
            if cancel and requests is not None:
                requests.put(None)
        finally:
            client.close()


def stream_grpc(url: str, model: str, request: GenerateRequest, *,
                timeout: float | None = None) -> GrpcStream:
    """Yield chunks as they arrive; safe to use from any plain thread.

    Each stream opens its own client (tritonclient allows one stream per
    client), so threads never share stream state. `timeout` bounds the whole
    stream. Stopping early: close() the iterator (or use it as a context
    manager / with contextlib.closing), which cancels the request on the server.

        with stream_grpc(url, "llm", GenerateRequest("Hi")) as chunks:
            for chunk in chunks:
                ..."""
    return GrpcStream(url, model, request, timeout)


def generate_grpc(url: str, model: str, request: GenerateRequest, *,
                  timeout: float | None = None) -> Result:
    """Non-streaming generation (stream=False): one response, whole text."""
    request = dataclasses.replace(request, stream=False)
    t_start = time.perf_counter()
    with stream_grpc(url, model, request, timeout=timeout) as chunks:
        return Result.from_chunks(chunks, t_start)


# ---------------------------------------------------------------- asyncio


class AsyncGrpcClient:
    """asyncio client for many concurrent streams in one process.

    All streams share one gRPC channel (each request is its own HTTP/2
    stream), so hundreds of in-flight requests cost no extra connections.

        async with AsyncGrpcClient("localhost:8001") as c:
            async for chunk in c.stream("llm", GenerateRequest("Hi")):
                ...
    """

    def __init__(self, url: str, **client_kwargs):
        self._client = grpcaio.InferenceServerClient(url, **client_kwargs)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> "AsyncGrpcClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def stream(self, model: str, request: GenerateRequest, *,
                     timeout: float | None = None) -> AsyncIterator[Chunk]:
        done = asyncio.Event()
        # Built before the call: raised inside the request iterator, an error would reach the
        # caller as the call's cancellation.
        first = {**_stream_request(model, request), "parameters": {"triton_enable_empty_final_response": True}}

        async def requests():
            yield first
            # Keep our side of the stream open until the final response, so
            # the server never sees a half-closed stream mid-generation.
            await done.wait()

        call = self._client.stream_infer(requests(), stream_timeout=timeout)
        finished = False
        try:
            async for result, error in call:
                if error is not None:
                    finished = True
                    raise error_from_grpc(error)
                chunk, finished = _parse_result(result)
                if chunk is not None:
                    yield chunk
                if finished:
                    break
            if not finished:
                raise ClientError("UNAVAILABLE", "stream closed before the final response")
            # Close our side and let the RPC end normally (a cancel here would
            # show up as a cancelled request on the server).
            done.set()
            async for _ in call:
                pass
        except (InferenceServerException, grpc.RpcError) as e:
            raise error_from_grpc(e) from None
        finally:
            done.set()
            if not finished:
                call.cancel()  # consumer gave up or the stream broke: stop the work

    async def generate(self, model: str, request: GenerateRequest, *,
                       timeout: float | None = None) -> Result:
        request = dataclasses.replace(request, stream=False)
        t_start = time.perf_counter()
        chunks = [c async for c in self.stream(model, request, timeout=timeout)]
        return Result.from_chunks(chunks, t_start)


async def astream_grpc(url: str, model: str, request: GenerateRequest, *,
                       timeout: float | None = None) -> AsyncIterator[Chunk]:
    """One-off asyncio stream; prefer a shared AsyncGrpcClient under load."""
    async with AsyncGrpcClient(url) as client:
        async for chunk in client.stream(model, request, timeout=timeout):
            yield chunk
