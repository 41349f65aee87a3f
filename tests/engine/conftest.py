"""Fixtures of the engine tests: seeded checkpoints (built once per session), transformers models
on the same checkpoints, and an engine factory whose teardown checks the KV-block books."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine_testing import LLAMA3, V5_ROPE, block_invariants, edit_json, make_engine
from tools.random_llama import build


# name -> build() arguments. Each has its own seed so that a mix-up between them shows.
CHECKPOINTS = {
    "mha": dict(seed=2, num_key_value_heads=4),
    "tied": dict(seed=3, tie_word_embeddings=True),
    "llama3": dict(seed=4, rope_scaling=LLAMA3),
    "linear": dict(seed=5, rope_scaling=dict(rope_type="linear", factor=4.0)),
    "sharded": dict(seed=6, shard_mb=0.1),
    "v5": dict(seed=7),   # config.json rewritten below in the transformers-v5 style
}


def _to_v5_config(cfg: dict) -> dict:
    """transformers v5 writes `rope_parameters` (theta included) and `dtype` instead of
    rope_theta / rope_scaling / torch_dtype."""
    for key in ("rope_theta", "rope_scaling", "torch_dtype"):
        cfg.pop(key, None)
    cfg["rope_parameters"] = dict(V5_ROPE)
    cfg["dtype"] = "float32"
    return cfg


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tiny_model_dir):
    """checkpoint(name) -> model directory; "gqa" is the session's tiny default model."""
    cache: dict[str, Path] = {"gqa": tiny_model_dir}

    def get(name: str) -> Path:
        if name not in cache:
            path = build(tmp_path_factory.mktemp(name), size="tiny", **CHECKPOINTS[name])
            if name == "v5":
                edit_json(path / "config.json", _to_v5_config)
            cache[name] = path
        return cache[name]

    return get


@pytest.fixture(scope="session")
def hf_model():
    """hf_model(dir) -> transformers LlamaForCausalLM (fp32, eval, EOS disabled for generate)."""
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cache = {}

    def get(model_dir):
        key = str(model_dir)
        if key not in cache:
            model = LlamaForCausalLM.from_pretrained(key, dtype=torch.float32).eval()
            model.generation_config.eos_token_id = None   # the engine runs with ignore_eos
            model.generation_config.pad_token_id = 2
            cache[key] = model
        return cache[key]

    return get


@pytest.fixture
def gqa(checkpoint):
    """The default engine-test checkpoint: grouped-query attention."""
    return checkpoint("gqa")


@pytest.fixture
def engine_factory():
    """engine_factory(model_dir, **EngineConfig fields). At teardown every engine it made must be
    idle with all KV blocks free and its books consistent."""
    engines = []

    def make(model_dir, **kw):
        eng = make_engine(model_dir, **kw)
        engines.append(eng)
        return eng

    yield make
    for eng in engines:
        block_invariants(eng)
        assert not eng.has_unfinished(), "requests left in the engine"
        assert eng.block_manager.num_used_blocks == 0, "KV blocks leaked"
        assert not eng.seqs
