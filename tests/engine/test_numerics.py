"""The engine computes what transformers computes, on the same checkpoint.

Expected values come from `LlamaForCausalLM.from_pretrained(dir, dtype=float32)`: last-position
logits of prefill and decode steps, and greedy continuations from `generate(do_sample=False)`. The
engine runs on CPU in fp32 through the PyTorch reference kernels and a paged KV cache.
"""
from __future__ import annotations

import pytest
import torch

from engine import SamplingParams
from engine.config import ModelConfig
from engine_testing import (GREEDY, LLAMA3, PROMPTS, V5_ROPE, copy_checkpoint, drive, edit_json,
                            hf_greedy, hf_last_logits, record_logits, run_requests)

N_NEW = GREEDY.max_tokens
_greedy_cache: dict = {}


def expected_greedy(hf_model, model_dir, ids, n=N_NEW):
    key = (str(model_dir), tuple(ids), n)
    if key not in _greedy_cache:
        _greedy_cache[key] = hf_greedy(hf_model(model_dir), list(ids), n)
    return _greedy_cache[key]


def assert_logits_close(got: torch.Tensor, ref: torch.Tensor, what: str):
    scale = max(1.0, ref.abs().max().item())
    diff = (got - ref).abs().max().item()
    assert diff <= 5e-5 * scale, f"{what}: max |engine - transformers| = {diff:.3g} (logit scale {scale:.3g})"
    # Not a vacuous comparison: the logits do discriminate between tokens.
    assert ref.std().item() > 0.5


def test_prompts_cover_multiple_blocks(checkpoint, engine_factory):
    eng = engine_factory(checkpoint("gqa"))
    lens = [len(eng.tokenize(p)) for p in PROMPTS]
    assert len(set(lens)) == len(lens), "prompts must have different lengths"
    assert sum(n >= 40 for n in lens) >= 3 and max(lens) > 64, lens


# ----- (a) logits ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name, engine_kw", [
    ("gqa", {}),
    ("gqa", {"block_size": 8}),
    ("gqa", {"max_num_batched_tokens": 16, "max_num_seqs": 8}),   # chunked prefill
    ("mha", {}),
    ("tied", {}),
    ("llama3", {}),
    ("v5", {}),
])
def test_prefill_and_decode_logits_match_transformers(name, engine_kw, checkpoint, hf_model, engine_factory):
    d = checkpoint(name)
    hf = hf_model(d)
    eng = engine_factory(d, **engine_kw)
    records = record_logits(eng)
    prompts = [eng.tokenize(p) for p in PROMPTS] + [[500]]
    steps = 4
    run_requests(eng, prompts, SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True))

    rows = [(ids, row) for rec in records for ids, row in rec]
    # One prefill row and steps-1 decode rows per prompt, each seen exactly once, prefills first.
    assert len(rows) == len(prompts) * steps
    for p in prompts:
        lens = [len(ids) for ids, _ in rows if ids[:len(p)] == p and len(ids) - len(p) < steps]
        assert lens == [len(p) + k for k in range(steps)], (len(p), lens)
    for ids, row in rows:
        assert_logits_close(row, hf_last_logits(hf, ids), f"{name} {engine_kw} at length {len(ids)}")


def test_decode_logits_after_prefix_cache_hit_match_transformers(checkpoint, hf_model, engine_factory):
    """A request that starts from cached blocks of another computes the same logits."""
    d = checkpoint("gqa")
    hf = hf_model(d)
    eng = engine_factory(d)
    base = eng.tokenize(PROMPTS[4])
    run_requests(eng, [base], SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True), prefix="warm")
    records = record_logits(eng)
    other = base[:50] + eng.tokenize(" the end")[1:]
    seq = eng.add_request("hit", other, SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
    assert seq.num_computed_tokens == 0
    drive(eng)
    assert seq.num_cached_prompt_tokens == 48
    rows = [(ids, row) for rec in records for ids, row in rec]
    assert len(rows) == 3
    for ids, row in rows:
        assert_logits_close(row, hf_last_logits(hf, ids), f"after prefix hit, length {len(ids)}")


# ----- (b) greedy continuations -------------------------------------------------------------------
GREEDY_CONFIGS = [
    ("gqa", {}),
    ("gqa", {"block_size": 8}),
    ("gqa", {"block_size": 32}),
    ("mha", {}),
    ("tied", {}),
    ("llama3", {}),
    ("linear", {}),
    ("sharded", {}),
    ("v5", {}),
]


@pytest.mark.parametrize("name, engine_kw", GREEDY_CONFIGS, ids=[f"{n}-{kw}" for n, kw in GREEDY_CONFIGS])
def test_greedy_matches_transformers_alone_and_batched(name, engine_kw, checkpoint, hf_model, engine_factory):
    d = checkpoint(name)
    tokenize = engine_factory(d).tokenize
    prompts = [tokenize(p) for p in PROMPTS]
    expected = [expected_greedy(hf_model, d, ids) for ids in prompts]

    # Alone (a batch of one), each prompt in turn on one engine.
    eng = engine_factory(d, **engine_kw)
    for ids, exp in zip(prompts, expected):
        [(text, toks, reason)] = run_requests(eng, [ids], GREEDY)
        assert toks == exp, f"{name}: prompt of {len(ids)} tokens alone"
        assert reason == "length"
    # Batches of 3 and 5 prompts of different lengths, each on a fresh engine (no cache hits).
    for k in (3, 5):
        eng = engine_factory(d, **engine_kw)
        results = run_requests(eng, prompts[:k], GREEDY)
        for i, (_, toks, reason) in enumerate(results):
            assert toks == expected[i], f"{name}: prompt {i} in a batch of {k}"
            assert reason == "length"


@pytest.mark.parametrize("name", ["gqa", "llama3"])
def test_one_token_prompt(name, checkpoint, hf_model, engine_factory):
    d = checkpoint(name)
    eng = engine_factory(d)
    bos = eng.model_config.bos_token_id
    for ids in ([bos], [500]):
        exp = expected_greedy(hf_model, d, ids)
        [(_, toks, _)] = run_requests(eng, [ids], GREEDY)
        assert toks == exp
    # and next to long prompts in one batch
    long_ids = eng.tokenize(PROMPTS[4])
    res = run_requests(engine_factory(d), [[500], long_ids, [bos]], GREEDY)
    assert res[0][1] == expected_greedy(hf_model, d, [500])
    assert res[1][1] == expected_greedy(hf_model, d, long_ids)
    assert res[2][1] == expected_greedy(hf_model, d, [bos])


@pytest.mark.parametrize("name", ["llama3", "v5"])
def test_long_generation_past_original_context(name, checkpoint, hf_model, engine_factory):
    """Short prompt, generation well past original_max_position_embeddings (32)."""
    d = checkpoint(name)
    eng = engine_factory(d)
    prompts = [eng.tokenize(PROMPTS[0]), eng.tokenize(PROMPTS[1])]
    n = 64
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    assert len(prompts[0]) + n > 2 * 32
    results = run_requests(eng, prompts, params)
    for ids, (_, toks, _) in zip(prompts, results):
        assert toks == expected_greedy(hf_model, d, ids, n)


# ----- the configurations really are what they claim -------------------------------------------
def _unscaled_copy(src, dst, theta=None):
    def edit(cfg):
        cfg.pop("rope_scaling", None)
        cfg.pop("rope_parameters", None)
        cfg["rope_theta"] = theta or cfg.get("rope_theta", 10000.0)
    copy_checkpoint(src, dst)
    edit_json(dst / "config.json", edit)
    return dst


@pytest.mark.parametrize("name", ["llama3", "linear", "v5"])
def test_rope_scaling_changes_the_model(name, checkpoint, hf_model, tmp_path):
    """Without this, the scaled-RoPE tests could pass with the scaling ignored."""
    d = checkpoint(name)
    plain = _unscaled_copy(d, tmp_path / "plain", theta=10000.0)
    ids = [5 + (7 * i) % 900 for i in range(60)]
    a, b = hf_last_logits(hf_model(d), ids), hf_last_logits(hf_model(plain), ids)
    assert (a - b).abs().max().item() > 0.05


def test_checkpoint_variants_are_what_they_claim(checkpoint):
    cfg = {n: ModelConfig.from_dir(checkpoint(n)) for n in ("gqa", "mha", "tied", "llama3", "linear", "v5")}
    assert (cfg["gqa"].num_heads, cfg["gqa"].num_kv_heads) == (4, 2)
    assert cfg["mha"].num_kv_heads == cfg["mha"].num_heads == 4
    assert cfg["tied"].tie_word_embeddings and not cfg["gqa"].tie_word_embeddings
    assert cfg["llama3"].rope_scaling["rope_type"] == "llama3"
    assert cfg["llama3"].rope_scaling["original_max_position_embeddings"] == LLAMA3["original_max_position_embeddings"]
    assert cfg["linear"].rope_scaling == {"rope_type": "linear", "factor": 4.0}
    assert cfg["v5"].rope_theta == V5_ROPE["rope_theta"]
    assert cfg["v5"].rope_scaling["rope_type"] == "llama3" and "rope_theta" not in cfg["v5"].rope_scaling
    assert cfg["gqa"].rope_scaling is None
    shards = sorted(p.name for p in checkpoint("sharded").glob("*.safetensors"))
    assert len(shards) >= 3 and (checkpoint("sharded") / "model.safetensors.index.json").is_file()


def test_tied_checkpoint_has_no_lm_head_and_shares_embedding(checkpoint, engine_factory):
    from safetensors import safe_open
    d = checkpoint("tied")
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()
    eng = engine_factory(d)
    assert eng.runner.model.w["lm_head"] is eng.runner.model.w["embed"]


def test_logprobs_and_generate_api_match_transformers(checkpoint, hf_model, engine_factory):
    """Reported logprobs are transformers' log_softmax at each step; generate() agrees with it too."""
    d = checkpoint("gqa")
    hf = hf_model(d)
    eng = engine_factory(d)
    prompts = [eng.tokenize(PROMPTS[1]), eng.tokenize(PROMPTS[3])]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=3)
    for rid, ids in zip(("p0", "p1"), prompts):
        eng.add_request(rid, ids, params)
    outs = drive(eng)
    for rid, ids in zip(("p0", "p1"), prompts):
        toks = [t for o in outs[rid] for t in o.token_ids]
        entries = [e for o in outs[rid] for e in o.logprobs]
        assert len(entries) == len(toks) == 6
        total = 0.0
        for k, (tok, entry) in enumerate(zip(toks, entries)):
            ref = torch.log_softmax(hf_last_logits(hf, ids + toks[:k]).double(), dim=-1)
            top3 = ref.topk(3).indices.tolist()
            assert tok == top3[0]
            assert set(entry) == {str(t) for t in top3}           # chosen token is the top one here
            for t in top3:
                assert entry[str(t)]["logprob"] == pytest.approx(ref[t].item(), abs=1e-4)
                assert entry[str(t)]["decoded_token"] == eng.tokenizer.decode([t], skip_special_tokens=False)
            total += ref[tok].item()
        assert outs[rid][-1].cumulative_logprob == pytest.approx(total, abs=1e-3)
    completions = eng.generate([PROMPTS[0], prompts[1]], GREEDY)
    assert completions[0].token_ids == expected_greedy(hf_model, d, eng.tokenize(PROMPTS[0]))
    assert completions[1].token_ids == expected_greedy(hf_model, d, prompts[1])
    assert completions[0].text == eng.tokenizer.decode(completions[0].token_ids)
    assert [c.finish_reason for c in completions] == ["length", "length"]
    assert completions[1].num_input_tokens == len(prompts[1])
