"""Read Hugging Face safetensors (single file or sharded) into the engine's fused weight layout."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from engine.config import ModelConfig, ModelLoadError


def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (model_dir / n).is_file()]
        if missing:
            raise ModelLoadError(f"{index} lists shards that are missing: {', '.join(missing)}")
        return [model_dir / n for n in names]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no *.safetensors weights in {model_dir} (PyTorch .bin checkpoints "
                             "are not supported: convert them to safetensors)")
    return files


def load_state_dict(model_dir: str | Path, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in safetensors_files(Path(model_dir)):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name).to(device=device, dtype=dtype)
    return tensors


def fused_weights(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename HF tensors and concatenate q/k/v and gate/up, so each layer does two fewer matmuls."""

    def take(name: str) -> torch.Tensor:
        if name not in sd:
            raise ModelLoadError(f"weight {name!r} is missing from the checkpoint")
        return sd.pop(name)

    out = {"embed": take("model.embed_tokens.weight"), "norm": take("model.norm.weight")}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
        out["lm_head"] = out["embed"]
    else:
        out["lm_head"] = take("lm_head.weight")
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        out[f"{i}.input_norm"] = take(p + "input_layernorm.weight")
        out[f"{i}.post_norm"] = take(p + "post_attention_layernorm.weight")
        out[f"{i}.qkv"] = torch.cat([take(p + f"self_attn.{x}_proj.weight") for x in "qkv"])
        out[f"{i}.o"] = take(p + "self_attn.o_proj.weight")
        out[f"{i}.gate_up"] = torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")])
        out[f"{i}.down"] = take(p + "mlp.down_proj.weight")
    _check_shapes(cfg, out)
    return out


def _check_shapes(cfg: ModelConfig, w: dict[str, torch.Tensor]) -> None:
    h, d = cfg.hidden_size, cfg.head_dim
    expect = {"embed": (cfg.vocab_size, h), "lm_head": (cfg.vocab_size, h),
              "0.qkv": ((cfg.num_heads + 2 * cfg.num_kv_heads) * d, h),
              "0.gate_up": (2 * cfg.intermediate_size, h)}
    for name, shape in expect.items():
        if tuple(w[name].shape) != shape:
            raise ModelLoadError(f"weight {name} has shape {tuple(w[name].shape)}, config.json implies {shape}")
