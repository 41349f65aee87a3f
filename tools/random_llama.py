"""Build a seeded random-weight Llama checkpoint in Hugging Face format.

No model can be downloaded on our machines, so every test and benchmark runs on a checkpoint made
here: `config.json`, `generation_config.json`, `*.safetensors` (optionally sharded, with the
`model.safetensors.index.json` that Hugging Face writes) and a real byte-level BPE `tokenizer.json`
trained with `tokenizers` on local text (the Python standard library's sources plus a multilingual
sample, so multi-byte characters get their own merges).

The weights are scaled so that next-token distributions are peaked (logit spread of several units):
with HF's default init a random model's logits are nearly uniform and greedy decoding would hinge on
rounding noise, which makes "greedy tokens identical to transformers" a coin toss instead of a test.

    python -m tools.random_llama --size tiny --out models/tiny
    python -m tools.random_llama --size llama-3.2-1b --out models/llama-1b --dtype bfloat16
"""
from __future__ import annotations

import argparse
import json
import math
import sysconfig
from pathlib import Path

import torch
from safetensors.torch import save_file

# Shapes. The two big ones copy Llama-3.2-1B and Llama-3-8B (weights random, shapes real).
SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=2048, vocab_size=None,
                 tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=32, max_position_embeddings=4096, vocab_size=None,
                  tie_word_embeddings=False, rope_theta=500000.0,
                  rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                    high_freq_factor=4.0, original_max_position_embeddings=1024)),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         max_position_embeddings=131072, vocab_size=128256, tie_word_embeddings=True,
                         rope_theta=500000.0,
                         rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                           high_freq_factor=4.0, original_max_position_embeddings=8192)),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                       max_position_embeddings=8192, vocab_size=128256, tie_word_embeddings=False,
                       rope_theta=500000.0, rope_scaling=None),
}

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
SPECIALS = [BOS, EOS, "<|pad|>"]

MULTILINGUAL_SAMPLE = """
Once upon a time there was a little model that streamed tokens one by one.
Il était une fois un petit modèle qui générait du texte. Ça marche très bien, n'est-ce pas ?
Es war einmal ein kleines Modell. Größe, Straße, Übermäßig.
昔々、小さなモデルがありました。トークンを一つずつ生成します。
从前有一个小模型，它一个一个地生成词元。你好，世界！
옛날 옛적에 작은 모델이 있었습니다. 안녕하세요.
Жили-были маленькая модель и большой сервер. Привет, мир!
Emoji: 😀 😃 🚀 🎉 👍🏽 🇫🇷 ❤️ ✨ 🤖 — streaming never breaks a character.
"""


def training_corpus(max_chars: int = 4_000_000) -> list[str]:
    """Local text to train the tokenizer on: the stdlib sources (sorted, so the result is stable)."""
    texts = [MULTILINGUAL_SAMPLE] * 50
    total = 0
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return texts


def train_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer in the Llama-3 style: BOS added by the post-processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(training_corpus(), trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    return tok


def _normal(shape, std, gen, dtype, device):
    return (torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * std).to(dtype)


def random_weights(cfg: dict, seed: int, dtype: torch.dtype, device: str = "cpu") -> dict[str, torch.Tensor]:
    """HF Llama parameter names and shapes, filled with seeded, deliberately peaked random values."""
    gen = torch.Generator(device=device).manual_seed(seed)
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hd = cfg["head_dim"]
    nq, nkv, vocab = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    out_std = 1.0 / math.sqrt(2 * layers)  # keep the residual stream from growing layer over layer

    def lin(n_out, n_in, scale=1.0):
        return _normal((n_out, n_in), scale / math.sqrt(n_in), gen, dtype, device)

    def norm(n):  # not all ones, so a norm weight that fails to load changes the output
        return (1.0 + _normal((n,), 0.1, gen, torch.float32, device)).to(dtype)

    w = {"model.embed_tokens.weight": _normal((vocab, h), 4.0 / math.sqrt(h), gen, dtype, device)}
    for i in range(layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(h)
        w[p + "self_attn.q_proj.weight"] = lin(nq * hd, h)
        w[p + "self_attn.k_proj.weight"] = lin(nkv * hd, h)
        w[p + "self_attn.v_proj.weight"] = lin(nkv * hd, h)
        w[p + "self_attn.o_proj.weight"] = lin(h, nq * hd, out_std)
        w[p + "post_attention_layernorm.weight"] = norm(h)
        w[p + "mlp.gate_proj.weight"] = lin(inter, h)
        w[p + "mlp.up_proj.weight"] = lin(inter, h)
        w[p + "mlp.down_proj.weight"] = lin(h, inter, out_std)
    w["model.norm.weight"] = norm(h)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = _normal((vocab, h), 4.0 / math.sqrt(h), gen, dtype, device)
    return {k: v.contiguous().cpu() for k, v in w.items()}


def save_sharded(weights: dict[str, torch.Tensor], out: Path, shard_bytes: int | None) -> None:
    """One `model.safetensors`, or HF-style shards plus `model.safetensors.index.json`."""
    if not shard_bytes:
        save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in weights.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in shard})
    total = sum(t.numel() * t.element_size() for t in weights.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def build(out_dir: str | Path, size: str = "tiny", seed: int = 0, dtype: str = "float32",
          shard_mb: float | None = None, tokenizer_vocab: int | None = None,
          device: str = "cpu", **overrides) -> Path:
    """Write a complete HF model directory and return its path. `overrides` change config fields
    (e.g. num_key_value_heads=4 for MHA, tie_word_embeddings=True)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(SIZES[size])
    cfg.update(overrides)
    tok_vocab = tokenizer_vocab or min(cfg["vocab_size"] or 1024, 8192)
    tok = train_tokenizer(tok_vocab)
    # Tiny models use exactly the tokenizer's vocabulary; the real shapes keep their big vocab
    # (ids past the tokenizer decode to nothing, which only benchmarks ever see).
    cfg["vocab_size"] = cfg["vocab_size"] or tok.get_vocab_size()
    assert cfg["vocab_size"] >= tok.get_vocab_size()
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS,
        "pad_token": "<|pad|>", "model_max_length": cfg["max_position_embeddings"]}, indent=2))

    torch_dtype = getattr(torch, dtype)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "rms_norm_eps": 1e-5, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": bos_id, "eos_token_id": eos_id, "torch_dtype": dtype,
        "initializer_range": 0.02, "use_cache": True, **cfg,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": bos_id, "eos_token_id": [eos_id], "do_sample": False}, indent=2))
    weights = random_weights(cfg, seed, torch_dtype, device)
    save_sharded(weights, out, int(shard_mb * 2**20) if shard_mb else None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", default="tiny", choices=sorted(SIZES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--shard-mb", type=float, default=None, help="split weights into shards of this size")
    ap.add_argument("--device", default="cpu", help="where to draw the random numbers (cuda is faster)")
    args = ap.parse_args()
    path = build(args.out, args.size, args.seed, args.dtype, args.shard_mb, device=args.device)
    print(f"wrote {args.size} Llama checkpoint to {path}")


if __name__ == "__main__":
    main()
