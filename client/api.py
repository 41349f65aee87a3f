"""Public library surface: import from here (or from `client`)."""

from .grpc_api import (AsyncGrpcClient, GrpcStream, astream_grpc, build_grpc_inputs, error_from_grpc,
                       generate_grpc, stream_grpc)
from .http_api import SSEParser, error_from_http, generate_http, stream_http
from .request import Chunk, ClientError, GenerateRequest, Result, code_from_message

__all__ = [
    "AsyncGrpcClient", "Chunk", "ClientError", "GenerateRequest", "GrpcStream", "Result", "SSEParser",
    "astream_grpc", "build_grpc_inputs", "code_from_message", "error_from_grpc", "error_from_http",
    "generate_grpc", "generate_http", "stream_grpc", "stream_http",
]
