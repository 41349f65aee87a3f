"""Prompt construction (exact token counts with the model's tokenizer) and the perf_analyzer
--input-data files."""
from __future__ import annotations

import json
import random

import pytest

from perf.loadgen import PromptBuilder, load_tokenizer
from perf.pa_inputs import input_path, make_inputs, sampling_parameters, write_inputs
from perf.run_perf_analyzer import parse_csv, records_from_export


@pytest.fixture(scope="module")
def builder(tiny_model_dir):
    return PromptBuilder(tiny_model_dir)


@pytest.mark.parametrize("n", [2, 3, 17, 128, 500])
def test_prompts_have_exact_token_counts(builder, tiny_model_dir, n):
    tok = load_tokenizer(tiny_model_dir)
    rng = random.Random(n)
    for _ in range(5):
        text = builder.build(n, rng)
        assert len(tok.encode(text, add_special_tokens=True).ids) == n
    assert builder.exact and builder.num_special == 1   # the tiny tokenizer adds a BOS


def test_prompts_differ_and_are_reproducible(builder):
    a = [builder.build(64, random.Random(1)) for _ in range(2)]
    b = builder.build(64, random.Random(2))
    assert a[0] == a[1] and a[0] != b


def test_without_tokenizer_words_approximate(tmp_path):
    b = PromptBuilder(None)
    text = b.build(50, random.Random(0))
    assert not b.exact and b.count(text) is None
    assert len(text.split()) == 49          # one word per token, minus the BOS


def test_sampling_parameters_json():
    sp = json.loads(sampling_parameters(512))
    assert sp == {"max_tokens": 512, "min_tokens": 512, "ignore_eos": True, "temperature": 0.0}
    assert json.loads(sampling_parameters(8, ignore_eos=False, temperature=None)) == {"max_tokens": 8}


def test_pa_input_file(tmp_path, tiny_model_dir):
    path = write_inputs(32, 16, tmp_path, num_prompts=5, tokenizer=str(tiny_model_dir))
    assert path == input_path(tmp_path, 32, 16) and path.name == "inputs_32_16.json"
    doc = json.loads(path.read_text())
    assert len(doc["data"]) == 5
    tok = load_tokenizer(tiny_model_dir)
    for entry in doc["data"]:
        assert entry["stream"] == [True]
        assert isinstance(entry["sampling_parameters"][0], str)           # a JSON *string*, as vLLM's backend wants
        assert json.loads(entry["sampling_parameters"][0])["min_tokens"] == 16
        assert len(tok.encode(entry["text_input"][0]).ids) == 32
        assert entry["return_num_output_tokens"] == [True] and entry["return_cumulative_logprob"] == [True]
    assert len({e["text_input"][0] for e in doc["data"]}) == 5
    assert make_inputs(8, 4, num_prompts=2)["data"][0]["stream"] == [True]


def test_perf_analyzer_outputs_are_parsed(tmp_path):
    csv_path = tmp_path / "pa.csv"
    csv_path.write_text("Concurrency,Inferences/Second,Response Throughput,p50 latency,p99 latency,Avg latency\n"
                        "2,10.5,336.0,90000,150000,95000\n\nServer metrics,foo\n1,2\n")
    rows = parse_csv(csv_path)
    assert rows == [{"Concurrency": 2, "Inferences/Second": 10.5, "Response Throughput": 336.0,
                     "p50 latency": 90000, "p99 latency": 150000, "Avg latency": 95000}]
    ns = 1_000_000_000
    export = {"experiments": [{"experiment": {"mode": "concurrency", "value": 2}, "requests": [
        {"timestamp": 100 * ns, "request_inputs": {"sampling_parameters": '{"max_tokens": 3}'},
         "response_timestamps": [100 * ns + ns // 10, 100 * ns + ns // 5],
         "response_outputs": [{"text_output": "a", "num_output_tokens": 1},
                              {"text_output": "bc", "num_output_tokens": 2}]}]}]}
    [(exp, recs)] = records_from_export(export)
    assert exp["value"] == 2
    r = recs[0]
    assert r.output_tokens == 3 and r.output_len == 3
    assert r.ttft == pytest.approx(0.1) and r.itl == pytest.approx([0.05, 0.05])
