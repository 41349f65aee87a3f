"""Configuration: what the model is (read from the HF directory) and how the engine runs it."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class ModelLoadError(RuntimeError):
    """The model directory cannot be served: missing file, unsupported architecture or option."""


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    torch_dtype: str
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ModelConfig":
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ModelLoadError(f"model directory {str(model_dir)!r} does not exist")
        path = model_dir / "config.json"
        if not path.is_file():
            raise ModelLoadError(f"{path} is missing: a Hugging Face model directory needs config.json")
        try:
            cfg = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{path} is not valid JSON: {e}") from None
        try:
            return cls._from_hf(cfg, model_dir, path)
        except KeyError as e:
            raise ModelLoadError(f"{path} lacks the required key {e.args[0]!r}") from None

    @classmethod
    def _from_hf(cls, cfg: dict, model_dir: Path, path: Path) -> "ModelConfig":
        archs = cfg.get("architectures") or []
        # Without `architectures` transformers goes by model_type (AutoModelForCausalLM), so do we.
        supported = any(a in SUPPORTED_ARCHITECTURES for a in archs) if archs else cfg.get("model_type") == "llama"
        if not supported:
            named = f"architectures {archs!r}" if archs else f"model_type {cfg.get('model_type')!r} (no architectures)"
            raise ModelLoadError(f"unsupported architecture: {named} in {path}; "
                                 f"supported: {', '.join(SUPPORTED_ARCHITECTURES)} (model_type 'llama')")
        quant = cfg.get("quantization_config")
        if quant:
            # Its scales (FP8 weight_scale, GPTQ scales, ...) would be dropped and the raw weights
            # served: wrong outputs, silently.
            method = quant.get("quant_method") if isinstance(quant, dict) else None
            raise ModelLoadError(f"quantization_config (quant_method {method!r}) in {path} is not supported: "
                                 "serve an unquantized checkpoint (bfloat16, float16 or float32 weights)")
        for flag in ("attention_bias", "mlp_bias"):
            if cfg.get(flag):
                raise ModelLoadError(f"{flag}=true is not supported (Llama checkpoints have no biases)")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ModelLoadError(f"hidden_act {cfg['hidden_act']!r} is not supported (only silu)")

        # transformers v5 writes `rope_parameters`; v4 (most checkpoints) `rope_theta` + `rope_scaling`.
        rope = cfg.get("rope_parameters") or {}
        rope_theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        scaling = cfg.get("rope_scaling") or ({k: v for k, v in rope.items() if k != "rope_theta"} or None)
        if scaling is not None:
            rtype = scaling.get("rope_type", scaling.get("type", "default"))
            if rtype not in SUPPORTED_ROPE_TYPES:
                raise ModelLoadError(f"rope_scaling type {rtype!r} is not supported "
                                     f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
            scaling = None if rtype == "default" else _complete_rope_scaling(scaling, rtype, cfg, path)

        gen_eos = _generation_eos(model_dir)
        eos = gen_eos if gen_eos is not None else cfg.get("eos_token_id")
        eos_ids = tuple(eos if isinstance(eos, list) else ([] if eos is None else [eos]))
        num_heads = cfg["num_attention_heads"]
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=cfg.get("num_key_value_heads") or num_heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // num_heads,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=scaling,
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32"),
            eos_token_ids=eos_ids,
            bos_token_id=cfg.get("bos_token_id"),
        )


# The keys each scaled RoPE needs (engine/rope.py), as transformers requires them.
_ROPE_KEYS = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor")}


def _complete_rope_scaling(scaling: dict, rtype: str, cfg: dict, path: Path) -> dict:
    """The scaling dict with rope_type set and its required keys checked; llama3's
    original_max_position_embeddings defaults to max_position_embeddings, as in transformers."""
    for key in _ROPE_KEYS[rtype]:
        if key not in scaling:
            raise ModelLoadError(f"rope_scaling of type {rtype!r} in {path} lacks the required key {key!r}")
    out = {**scaling, "rope_type": rtype}
    if rtype == "llama3" and "original_max_position_embeddings" not in out:
        out["original_max_position_embeddings"] = cfg.get("max_position_embeddings", 2048)
    return out


def _generation_eos(model_dir: Path):
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return None
    try:
        gen = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path} is not valid JSON: {e}") from None
    return gen.get("eos_token_id") if isinstance(gen, dict) else None


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@dataclass
class EngineConfig:
    """How to serve the model. Every field can be set from config.pbtxt `parameters`."""
    model_dir: str
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    dtype: str = "auto"                    # auto: bf16 on GPU, fp32 on CPU
    max_num_seqs: int = 256                # sequences in one running batch
    max_model_len: int | None = None       # prompt + output tokens; default: the model's limit
    max_num_batched_tokens: int = 8192     # tokens per step (prefill chunks + decodes)
    # Query-key pairs the prefill chunks of one step may compute, so that chunks deep into a long
    # prompt get shorter (engine/scheduler.py). None: max_num_batched_tokens x 2048; 0: no limit.
    max_prefill_attention_pairs: int | None = None
    block_size: int = 16                   # tokens per KV-cache block
    num_kv_blocks: int | None = None       # fixed KV-cache size; default: from memory below
    kv_cache_memory_fraction: float = 0.90  # GPU: share of the device this instance may use in all
    cpu_kv_cache_gb: float = 1.0           # CPU: KV-cache budget when num_kv_blocks is not set
    enable_prefix_caching: bool = True
    enforce_eager: bool = False            # GPU: run steps eagerly instead of replaying CUDA graphs
    # Prepare step N+1 while the GPU runs step N (engine.step). None: on for CUDA devices; on the
    # CPU the forward pass runs on the engine thread itself, so there is nothing to overlap.
    async_scheduling: bool | None = None
    # Run the engine in its own process (engine/remote.py), so that the server's response sends do
    # not compete with it for one GIL. None: on for CUDA devices, where it served 1.1-1.4x the
    # tokens/s of the in-process engine on the H100 (perf/results/2026-11-23-h100/async/
    # engine_process_6f9258a); on the CPU the engine's forward itself is the bottleneck.
    engine_process: bool | None = None
    # With engine_process: threads in the server's model process that hand outputs to Triton, each
    # for a share of the requests (engine/remote.py). Each send is a round trip to the server
    # (~0.25 ms under load, more for a final response), so one thread sends 128 streams' responses
    # in ~30 ms rounds; several overlap them. Measured on the H100 with the admission thread (the
    # stub's main thread no longer tokenizes): 4 threads served 4-5% more tokens/s at c128 than 1
    # (0.93 vs 0.89 of the offline engine) and cut TTFT p50 by ~20 ms (perf/results/2026-11-24-h100/
    # served_host_path/). They also keep one client's slow sends from holding up the others.
    response_threads: int = 4
    max_waiting_requests: int = 4096       # admission queue bound; beyond it requests are refused
    seed: int = 0                          # for requests that sample without their own seed
    extra: dict = field(default_factory=dict)

    @property
    def overlaps_steps(self) -> bool:
        """Whether asynchronous scheduling is on (resolving None)."""
        if self.async_scheduling is None:
            return self.device.startswith("cuda")
        return self.async_scheduling

    @property
    def runs_in_own_process(self) -> bool:
        """Whether the engine runs in a child process (resolving None)."""
        if self.engine_process is None:
            return self.device.startswith("cuda")
        return self.engine_process

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of auto, {', '.join(DTYPES)}")
        return DTYPES[self.dtype]
