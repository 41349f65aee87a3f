"""Loading a model directory: clear ModelLoadError messages for what cannot be served, config
parsing (v4 and v5 styles), and dtype resolution."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import EngineConfig, LLMEngine, ModelConfig, ModelLoadError, SamplingParams
from engine_testing import copy_checkpoint, edit_json, make_engine, run_requests


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    """A full, editable copy of the tiny checkpoint (weights copied, not linked)."""
    return copy_checkpoint(tiny_model_dir, tmp_path / "model", link_weights=False)


def load_error(model_dir) -> str:
    with pytest.raises(ModelLoadError) as err:
        make_engine(model_dir)
    return str(err.value)


def test_missing_directory(tmp_path):
    msg = load_error(tmp_path / "nope")
    assert "does not exist" in msg and "nope" in msg


def test_missing_config_json(model_copy):
    (model_copy / "config.json").unlink()
    msg = load_error(model_copy)
    assert "config.json" in msg and "missing" in msg


@pytest.mark.parametrize("arch, model_type", [("MistralForCausalLM", "mistral"), ("GPT2LMHeadModel", "gpt2")])
def test_unsupported_architecture(model_copy, arch, model_type):
    edit_json(model_copy / "config.json", lambda c: c.update(architectures=[arch], model_type=model_type))
    msg = load_error(model_copy)
    assert arch in msg and "LlamaForCausalLM" in msg and "unsupported architecture" in msg


def test_no_architectures_names_the_model_type(model_copy):
    edit_json(model_copy / "config.json", lambda c: (c.pop("architectures"), c.update(model_type="gpt2")))
    msg = load_error(model_copy)
    assert "model_type 'gpt2'" in msg and "no architectures" in msg


def test_no_architectures_with_model_type_llama_loads(model_copy, tiny_model_dir):
    """As transformers' AutoModelForCausalLM does: model_type names the architecture."""
    edit_json(model_copy / "config.json", lambda c: (c.pop("architectures"), c.update(model_type="llama")))
    params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    prompt = [[5, 9, 13, 2]]
    assert run_requests(make_engine(model_copy), prompt, params) == run_requests(make_engine(tiny_model_dir), prompt, params)


@pytest.mark.parametrize("quant", [dict(quant_method="fp8", weight_block_size=[128, 128]),
                                   dict(quant_method="gptq", bits=4)])
def test_quantized_checkpoints_are_refused(model_copy, quant):
    """Their scales would be dropped and the raw weights served (wrong outputs, silently)."""
    edit_json(model_copy / "config.json", lambda c: c.update(quantization_config=quant))
    msg = load_error(model_copy)
    assert "quantization_config" in msg and quant["quant_method"] in msg


def test_invalid_generation_config(model_copy):
    (model_copy / "generation_config.json").write_text("{eos_token_id: 2}")
    msg = load_error(model_copy)
    assert "generation_config.json" in msg and "not valid JSON" in msg


@pytest.mark.parametrize("edit, words", [
    (dict(attention_bias=True), ["attention_bias"]),
    (dict(mlp_bias=True), ["mlp_bias"]),
    (dict(hidden_act="gelu"), ["hidden_act", "gelu"]),
    (dict(rope_scaling=dict(rope_type="yarn", factor=2.0)), ["yarn", "not supported"]),
    (dict(rope_scaling=dict(type="dynamic", factor=2.0)), ["dynamic", "not supported"]),
])
def test_unsupported_options(model_copy, edit, words):
    edit_json(model_copy / "config.json", lambda c: c.update(edit))
    msg = load_error(model_copy)
    for w in words:
        assert w in msg


def test_missing_tokenizer_json(model_copy):
    (model_copy / "tokenizer.json").unlink()
    msg = load_error(model_copy)
    assert "tokenizer.json" in msg and "missing" in msg


def test_no_safetensors(model_copy):
    (model_copy / "model.safetensors").unlink()
    (model_copy / "pytorch_model.bin").write_bytes(b"not really")
    msg = load_error(model_copy)
    assert "safetensors" in msg and str(model_copy) in msg


def test_missing_shard_named_in_the_index(tmp_path, checkpoint):
    d = copy_checkpoint(checkpoint("sharded"), tmp_path / "sharded")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2
    (d / shards[1]).unlink()
    msg = load_error(d)
    assert shards[1] in msg and shards[0] not in msg and "missing" in msg


def test_sharded_checkpoint_loads_every_shard(checkpoint):
    d = checkpoint("sharded")
    eng = make_engine(d)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3
    assert len(eng.runner.model.w) == 3 + 6 * eng.model_config.num_layers


@pytest.mark.parametrize("name", ["model.layers.1.mlp.down_proj.weight", "model.norm.weight", "lm_head.weight",
                                  "model.layers.0.self_attn.k_proj.weight"])
def test_missing_weight(model_copy, name):
    weights = load_file(str(model_copy / "model.safetensors"))
    del weights[name]
    save_file(weights, str(model_copy / "model.safetensors"), metadata={"format": "pt"})
    msg = load_error(model_copy)
    assert name in msg and "missing" in msg


def test_tied_checkpoint_needs_no_lm_head(model_copy):
    weights = load_file(str(model_copy / "model.safetensors"))
    del weights["lm_head.weight"]
    save_file(weights, str(model_copy / "model.safetensors"), metadata={"format": "pt"})
    edit_json(model_copy / "config.json", lambda c: c.update(tie_word_embeddings=True))
    eng = make_engine(model_copy)
    assert eng.runner.model.w["lm_head"] is eng.runner.model.w["embed"]


def test_wrong_shape_is_reported(model_copy):
    edit_json(model_copy / "config.json", lambda c: c.update(num_key_value_heads=1))
    msg = load_error(model_copy)
    assert "qkv" in msg and "shape" in msg


# ----- config parsing ----------------------------------------------------------------------------
def test_model_config_fields(tiny_model_dir):
    raw = json.loads((tiny_model_dir / "config.json").read_text())
    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    cfg = ModelConfig.from_dir(tiny_model_dir)
    assert cfg.vocab_size == raw["vocab_size"] and cfg.hidden_size == raw["hidden_size"]
    assert cfg.num_layers == raw["num_hidden_layers"] and cfg.num_heads == raw["num_attention_heads"]
    assert cfg.num_kv_heads == raw["num_key_value_heads"] and cfg.head_dim == raw["head_dim"]
    assert cfg.intermediate_size == raw["intermediate_size"]
    assert cfg.rms_norm_eps == raw["rms_norm_eps"] and cfg.rope_theta == raw["rope_theta"]
    assert cfg.rope_scaling is None and cfg.max_position_embeddings == raw["max_position_embeddings"]
    assert cfg.eos_token_ids == tuple(gen["eos_token_id"]) and cfg.bos_token_id == raw["bos_token_id"]
    assert cfg.torch_dtype == "float32"


def test_defaults_for_optional_fields(model_copy):
    def edit(c):
        for k in ("head_dim", "num_key_value_heads", "rope_theta", "rms_norm_eps", "torch_dtype",
                  "tie_word_embeddings", "max_position_embeddings"):
            c.pop(k)
    edit_json(model_copy / "config.json", edit)
    (model_copy / "generation_config.json").unlink()
    cfg = ModelConfig.from_dir(model_copy)
    assert cfg.head_dim == 64 // 4 and cfg.num_kv_heads == 4
    assert cfg.rope_theta == 10000.0 and cfg.rms_norm_eps == 1e-6 and cfg.torch_dtype == "float32"
    assert cfg.tie_word_embeddings is False and cfg.max_position_embeddings == 2048
    assert cfg.eos_token_ids == (json.loads((model_copy / "config.json").read_text())["eos_token_id"],)


@pytest.mark.parametrize("scaling, expected", [
    (dict(type="linear", factor=2.0), dict(type="linear", factor=2.0, rope_type="linear")),
    (dict(rope_type="default"), None),
    (None, None),
    (dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
          original_max_position_embeddings=64), "same"),
])
def test_rope_scaling_v4_style(model_copy, scaling, expected):
    edit_json(model_copy / "config.json", lambda c: c.update(rope_scaling=scaling, rope_theta=500.0))
    cfg = ModelConfig.from_dir(model_copy)
    assert cfg.rope_theta == 500.0
    assert cfg.rope_scaling == (scaling if expected == "same" else expected)


@pytest.mark.parametrize("params, theta, scaling", [
    (dict(rope_type="default", rope_theta=1234.0), 1234.0, None),
    (dict(rope_theta=1234.0), 1234.0, None),
    (dict(rope_type="linear", rope_theta=99.0, factor=3.0), 99.0, dict(rope_type="linear", factor=3.0)),
])
def test_rope_parameters_v5_style(model_copy, params, theta, scaling):
    def edit(c):
        c.pop("rope_theta")
        c.pop("rope_scaling")
        c["rope_parameters"] = params
    edit_json(model_copy / "config.json", edit)
    cfg = ModelConfig.from_dir(model_copy)
    assert cfg.rope_theta == theta and cfg.rope_scaling == scaling


def test_llama3_rope_defaults_its_original_length_and_names_missing_keys(model_copy):
    """transformers takes original_max_position_embeddings from max_position_embeddings when the
    llama3 scaling omits it; the frequency factors it requires are named when missing."""
    llama3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0)
    edit_json(model_copy / "config.json", lambda c: c.update(rope_scaling=llama3, max_position_embeddings=512))
    cfg = ModelConfig.from_dir(model_copy)
    assert cfg.rope_scaling == {**llama3, "original_max_position_embeddings": 512}
    make_engine(model_copy)   # builds its RoPE table
    edit_json(model_copy / "config.json", lambda c: c["rope_scaling"].pop("high_freq_factor"))
    msg = load_error(model_copy)
    assert "llama3" in msg and "'high_freq_factor'" in msg


def test_v5_unsupported_rope_type(model_copy):
    def edit(c):
        c.pop("rope_theta")
        c.pop("rope_scaling")
        c["rope_parameters"] = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0)
    edit_json(model_copy / "config.json", edit)
    assert "yarn" in load_error(model_copy)


# ----- dtype -------------------------------------------------------------------------------------
@pytest.mark.parametrize("device, dtype, expected", [
    ("cpu", "auto", torch.float32),
    ("cuda", "auto", torch.bfloat16),
    ("cuda:1", "auto", torch.bfloat16),
    ("cpu", "float32", torch.float32), ("cpu", "fp32", torch.float32),
    ("cpu", "bfloat16", torch.bfloat16), ("cpu", "bf16", torch.bfloat16),
    ("cpu", "float16", torch.float16), ("cpu", "fp16", torch.float16),
])
def test_dtype_resolution(device, dtype, expected):
    assert EngineConfig(model_dir="x", device=device, dtype=dtype).resolved_dtype() == expected


@pytest.mark.parametrize("dtype", ["int8", "float64", "", "FP16"])
def test_bad_dtype(dtype):
    with pytest.raises(ValueError) as err:
        EngineConfig(model_dir="x", device="cpu", dtype=dtype).resolved_dtype()
    assert repr(dtype) in str(err.value)


def test_bf16_engine_on_cpu_runs_in_bf16(tiny_model_dir):
    eng = make_engine(tiny_model_dir, dtype="bfloat16", num_kv_blocks=32)
    assert eng.runner.model.w["embed"].dtype == torch.bfloat16
    assert eng.runner.kv_cache[0][0].dtype == torch.bfloat16
    [(text, toks, reason)] = run_requests(eng, [eng.tokenize("Once upon a time")],
                                          SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    assert len(toks) == 8 and reason == "length"
    fp32 = make_engine(tiny_model_dir)
    [(_, ref, _)] = run_requests(fp32, [fp32.tokenize("Once upon a time")],
                                 SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    assert toks[0] == ref[0]        # peaked logits: the first token survives bf16 rounding


def test_default_kv_cache_size_on_cpu(tiny_model_dir):
    cfg = EngineConfig(model_dir=str(tiny_model_dir), device="cpu", cpu_kv_cache_gb=0.001, max_model_len=256)
    eng = LLMEngine(cfg)
    per_block = 2 * 2 * 16 * 2 * 16 * 4          # K and V, 2 layers, 16 tokens, 2 kv heads, dim 16, fp32
    assert eng.runner.bytes_per_block == per_block
    assert eng.runner.num_blocks == int(0.001 * 2**30) // per_block
    assert eng.kv_capacity_tokens == eng.runner.num_blocks * 16


def test_max_model_len_is_capped_by_the_model(tiny_model_dir, caplog):
    with caplog.at_level("WARNING", logger="engine.engine"):
        eng = make_engine(tiny_model_dir, max_model_len=10**6)
    assert eng.max_model_len == 2048
    assert "max_model_len 1000000 is above the model's max_position_embeddings; serving 2048" in caplog.text
    eng = LLMEngine(EngineConfig(model_dir=str(tiny_model_dir), device="cpu", num_kv_blocks=8))
    assert eng.max_model_len == 2048
    assert make_engine(tiny_model_dir, max_model_len=100).max_model_len == 100


def test_copy_is_complete(tiny_model_dir, model_copy):
    """The fixtures above start from a loadable copy (so each error is caused by its one edit)."""
    assert sorted(p.name for p in model_copy.iterdir()) == sorted(p.name for p in tiny_model_dir.iterdir())
    make_engine(model_copy)
    shutil.rmtree(model_copy)


@pytest.mark.parametrize("device,expect", [("cuda:0", True), ("cuda", True), ("cpu", False)])
def test_device_dependent_defaults(device, expect):
    # Empty config.pbtxt values keep None: asynchronous scheduling and the engine's own process
    # are then on for GPU instances only; an explicit value wins on either device.
    cfg = EngineConfig(model_dir="m", device=device)
    assert cfg.overlaps_steps is expect and cfg.runs_in_own_process is expect
    cfg = EngineConfig(model_dir="m", device=device, async_scheduling=not expect, engine_process=not expect)
    assert cfg.overlaps_steps is (not expect) and cfg.runs_in_own_process is (not expect)
