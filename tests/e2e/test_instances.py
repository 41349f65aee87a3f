"""Two model instances on one device through the real server: instance_group { count: 2 } starts
two engines (each with its own KV cache), Triton spreads requests over both, and every one of
many concurrent streams gets exactly the text it gets alone."""
from __future__ import annotations

import re

import pytest

from engine import EngineConfig, LLMEngine, SamplingParams
from tests.conftest import greedy_streams, start_server, stop_server, write_model_repository

INSTANCES = 2
NUM_KV_BLOCKS = 48          # per engine: 768 tokens, room for all 12 streams on either one
OUTPUT_TOKENS = 24
PROMPTS = [f"Instance test {i}: the {i * 3}th line of a poem about servers" for i in range(12)]


@pytest.fixture(scope="module")
def two_instance_server(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("instances")
    repo = write_model_repository(
        tmp, tiny_model_dir, instance_group=f"instance_group [{{ count: {INSTANCES}, kind: KIND_CPU }}]",
        num_kv_blocks=str(NUM_KV_BLOCKS), max_num_seqs="16", max_model_len="512")
    # --log-verbose=1 makes the Python backend log which instance executes each request
    # ("model llm, instance llm_0_1, executing 1 requests"); nothing else observes that in 2.51:
    # /v2/models/llm/stats and the nv_inference_* metrics have no per-instance breakdown.
    srv = start_server(tmp, repo, tiny_model_dir, extra_args=["--log-verbose=1"])
    yield srv
    stop_server(srv)


def instance_names() -> list[str]:
    # Triton names instances <model>_<group index>_<index in group>.
    return [f"llm_0_{i}" for i in range(INSTANCES)]


def test_two_instances_initialize_each_with_its_own_engine(two_instance_server):
    log = two_instance_server.log()
    for name in instance_names():
        assert f"TRITONBACKEND_ModelInstanceInitialize: {name} (CPU device 0)" in log, name
        assert f"TRITONBACKEND_ModelInstanceInitialize: instance initialization successful {name}" in log, name
    engines = re.findall(r"llm: \S+ on cpu \(the stub process\), (\d+) KV blocks of 16 tokens", log)
    assert engines == [str(NUM_KV_BLOCKS)] * INSTANCES, engines


def test_concurrent_streams_match_solo_and_use_both_instances(two_instance_server, tiny_model_dir):
    srv = two_instance_server
    solo_engine = LLMEngine(EngineConfig(model_dir=str(tiny_model_dir), device="cpu", num_kv_blocks=128,
                                         max_model_len=512))
    params = SamplingParams(max_tokens=OUTPUT_TOKENS, temperature=0, ignore_eos=True)
    solo = {p: solo_engine.generate([p], params)[0].text for p in PROMPTS}   # one at a time
    executed_before = executions(srv.log())

    results = greedy_streams(srv, PROMPTS, OUTPUT_TOKENS)
    for prompt, text, n in results:
        assert n == OUTPUT_TOKENS, prompt
        assert text == solo[prompt], prompt

    executed = executions(srv.log())
    per_instance = {name: executed.get(name, 0) - executed_before.get(name, 0) for name in instance_names()}
    assert sum(per_instance.values()) == len(PROMPTS), per_instance
    assert all(n > 0 for n in per_instance.values()), f"requests were not spread: {per_instance}"


def executions(log: str) -> dict[str, int]:
    """Requests executed per instance, from the Python backend's verbose log."""
    counts: dict[str, int] = {}
    for name, n in re.findall(r"model llm, instance (\S+), executing (\d+) requests", log):
        counts[name] = counts.get(name, 0) + int(n)
    return counts
