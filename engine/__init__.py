"""The LLM engine: usable and testable without tritonserver.

request -> LLMEngine.add_request -> Scheduler -> ModelRunner (LlamaModel over the paged KV cache)
-> Sampler -> detokenizer/stop checks -> RequestOutput. EngineLoop runs it on its own thread.
"""
from engine.config import EngineConfig, ModelConfig, ModelLoadError
from engine.engine import Completion, LLMEngine
from engine.loop import EngineDead, EngineLoop
from engine.sampling_params import InvalidRequest, SamplingParams
from engine.scheduler import QueueFull
from engine.sequence import RequestOutput

__all__ = ["EngineConfig", "ModelConfig", "ModelLoadError", "LLMEngine", "Completion", "EngineLoop",
           "EngineDead", "InvalidRequest", "SamplingParams", "QueueFull", "RequestOutput"]
