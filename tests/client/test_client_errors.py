"""Unit tests: server errors of both transports map onto ClientError."""

import json

import grpc
import pytest
from tritonclient.utils import InferenceServerException

from client import ClientError, code_from_message, error_from_grpc, error_from_http


def test_grpc_rpc_level_status():
    e = error_from_grpc(InferenceServerException("connection refused", status="StatusCode.UNAVAILABLE"))
    assert (e.code, e.message, e.http_status) == ("UNAVAILABLE", "connection refused", None)
    assert str(e) == "UNAVAILABLE: connection refused"


def test_grpc_in_stream_error_has_no_status():
    # Triton puts only the message into ModelStreamInferResponse.error_message.
    e = error_from_grpc(InferenceServerException("max_tokens must be at least 1, got -1."))
    assert (e.code, e.message) == ("UNKNOWN", "max_tokens must be at least 1, got -1.")


def test_grpc_raw_rpc_error_from_aio():
    class FakeRpcError(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.DEADLINE_EXCEEDED

        def details(self):
            return "Deadline Exceeded"

    e = error_from_grpc(FakeRpcError())
    assert (e.code, e.message) == ("DEADLINE_EXCEEDED", "Deadline Exceeded")


def test_client_error_passes_through():
    original = ClientError("NOT_FOUND", "x")
    assert error_from_grpc(original) is original


@pytest.mark.parametrize("status,body,code,message", [
    (400, b'{"error":"max_tokens must be at least 1"}', "INVALID_ARGUMENT", "max_tokens must be at least 1"),
    # generate_stream wraps even an early error as an SSE event.
    (400, b'data: {"error":"bad top_p"}\n\n', "INVALID_ARGUMENT", "bad top_p"),
    (404, b'{"error":"Request for unknown model: \'x\' is not found"}', "NOT_FOUND",
     "Request for unknown model: 'x' is not found"),
    (500, b'{"error":"boom"}', "INTERNAL", "boom"),
    (503, b"", "UNAVAILABLE", "Service Unavailable"),
    (502, b"<html>proxy</html>", "UNAVAILABLE", "<html>proxy</html>"),
    (418, b"teapot", "HTTP_418", "teapot"),
])
def test_http_status_mapping(status, body, code, message):
    e = error_from_http(status, body)
    assert (e.code, e.message, e.http_status) == (code, message, status)


@pytest.mark.parametrize("message,code", [
    # The model's messages (model_repository/llm/1/model.py, engine/): Triton sends only the text in-stream.
    ("the waiting queue is full (4096 requests); retry later", "UNAVAILABLE"),
    ("the engine has stopped: the engine is shutting down", "UNAVAILABLE"),
    ("the engine has stopped: engine process unreachable: [Errno 32] Broken pipe", "UNAVAILABLE"),
    ("engine step failed: RuntimeError: CUDA error", "UNAVAILABLE"),
    ("the engine process exited unexpectedly (exit code -9)", "UNAVAILABLE"),
    ("request aborted: the model is being unloaded (server shutting down)", "UNAVAILABLE"),
    ("request cancelled by the client", "CANCELLED"),
    ("internal error: ValueError: x", "INTERNAL"),
    ("internal error sending the response: OSError: y", "INTERNAL"),
    ("max_tokens must be at least 1, got -1.", "UNKNOWN"),
    # A bad request's message begins with the field at fault; one that quotes the client's own
    # value is still not retryable.
    ("max_tokens: must be at least 1, got -5", "INVALID_ARGUMENT"),
    ("max_tokens: must be an integer, got 'the engine has stopped'", "INVALID_ARGUMENT"),
    ("stop: got 'request aborted' twice", "INVALID_ARGUMENT"),
    # Triton's own refusals before the model.
    ("Request for unknown model: 'nope' is not found", "NOT_FOUND"),
    ("[request id: <id_unknown>] unexpected inference input 'foo' for model 'llm'", "INVALID_ARGUMENT"),
    ("[request id: <id_unknown>] inference input 'stream' data-type is 'INT32', but model 'llm' expects 'BOOL'",
     "INVALID_ARGUMENT"),
    ("[request id: <id_unknown>] unexpected shape for input 'text_input' for model 'llm'. Expected [1], got [2]. ",
     "INVALID_ARGUMENT"),
])
def test_grpc_in_stream_error_code_from_message(message, code):
    e = error_from_grpc(InferenceServerException(message))
    assert (e.code, e.message) == (code, message)
    # HTTP: every model error is a 400; the message decides, INVALID_ARGUMENT otherwise.
    h = error_from_http(400, b'{"error": %s}' % json.dumps(message).encode())
    assert (h.code, h.http_status) == (code if code not in ("UNKNOWN", "NOT_FOUND") else "INVALID_ARGUMENT", 400)


def test_rpc_level_status_wins_over_message():
    e = error_from_grpc(InferenceServerException("request cancelled by the client", status="StatusCode.UNAVAILABLE"))
    assert e.code == "UNAVAILABLE"
    assert code_from_message("Request for unknown model") is None


def _closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_grpc_stream_to_no_server_is_unavailable():
    """No server at the address: UNAVAILABLE (retryable) with the connection's cause, never
    tritonclient's generic "stream is no longer in valid state" as UNKNOWN (which it raises when
    its stream thread has already failed by the time the request is queued)."""
    from client import GenerateRequest, stream_grpc
    url = f"127.0.0.1:{_closed_port()}"
    for _ in range(4):
        with pytest.raises(ClientError) as info:
            list(stream_grpc(url, "llm", GenerateRequest("hi", max_tokens=2), timeout=10))
        assert info.value.code == "UNAVAILABLE", info.value
        assert "no longer in valid state" not in info.value.message


def test_async_grpc_stream_to_no_server_is_unavailable():
    import asyncio

    from client import AsyncGrpcClient, GenerateRequest

    async def run():
        async with AsyncGrpcClient(f"127.0.0.1:{_closed_port()}") as c:
            return [chunk async for chunk in c.stream("llm", GenerateRequest("hi", max_tokens=2), timeout=10)]

    with pytest.raises(ClientError) as info:
        asyncio.run(run())
    assert info.value.code == "UNAVAILABLE", info.value
