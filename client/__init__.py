"""Client for the Triton-served LLM (vLLM-backend-compatible tensor interface).

    from client import GenerateRequest, stream_grpc
    for chunk in stream_grpc("localhost:8001", "llm", GenerateRequest("Hi", max_tokens=16)):
        print(chunk.text, end="", flush=True)
"""

from .api import *  # noqa: F401,F403
from .api import __all__  # noqa: F401
