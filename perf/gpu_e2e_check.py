"""GPU end-to-end check (device tool): the served model on KIND_GPU matches transformers on the GPU.

    source tools/device_unpack.sh && python perf/gpu_e2e_check.py --out $OUT

1. Builds a seeded random Llama checkpoint (bf16) on the GPU.
2. Runs transformers `LlamaForCausalLM` (bf16, cuda) greedy `generate` on several prompts.
3. Runs our engine in-process on the GPU (Triton kernels, CUDA graphs): prefill logits close to
   transformers', greedy tokens identical.
4. Starts the real tritonserver with a KIND_GPU instance and checks the streamed greedy text of
   every prompt equals transformers' text, and non-streaming equals streaming.
Writes gpu_e2e.json (device, command, git commit, per-check results) and exits non-zero on failure.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPTS = ["Once upon a time", "The quick brown fox jumps over the lazy dog. " * 6, "你好，世界！😀 Emoji and CJK",
           "def fibonacci(n):\n    if n < 2:\n        return n\n    return", "a",
           "Il était une fois un petit modèle qui générait du texte, token par token, sans jamais s'arrêter"]
MAX_TOKENS = 32


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=REPO, text=True).strip()
    except Exception:
        return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="perf/results/latest")
    ap.add_argument("--size", default="small")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from transformers import LlamaForCausalLM

    from engine import EngineConfig, LLMEngine, SamplingParams
    from tests.conftest import start_server, stop_server, write_model_repository
    from tools.random_llama import build
    from client import GenerateRequest, generate_grpc, stream_grpc

    tmp = Path(tempfile.mkdtemp())
    model_dir = build(tmp / "model", size=args.size, seed=3, dtype="bfloat16", device="cuda")
    report: dict = {"device": torch.cuda.get_device_name(), "command": " ".join(sys.argv),
                    "git_commit": git_commit(), "date": time.strftime("%Y-%m-%d"), "model": args.size,
                    "checks": {}}
    ok = True

    hf = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
    engine = LLMEngine(EngineConfig(model_dir=str(model_dir), device="cuda", max_model_len=2048,
                                    kv_cache_memory_fraction=0.3))
    hf_tokens, max_logit_err = [], 0.0
    for prompt in PROMPTS:
        ids = engine.tokenize(prompt)
        with torch.no_grad():
            gen = hf.generate(torch.tensor([ids], device="cuda"), max_new_tokens=MAX_TOKENS, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
            hf_logits = hf(torch.tensor([ids], device="cuda")).logits[0, -1].float()
        hf_tokens.append(gen[0, len(ids):].tolist())
        # Our prefill logits for the same prompt: one request, first step.
        from engine.sequence import Sequence  # noqa: F401
        engine.add_request("probe", ids, SamplingParams(max_tokens=1, temperature=0))
        batch = engine.scheduler.schedule()
        ours = engine.runner.run(batch)[0]
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += n
        engine.abort("probe")
        err = ((ours - hf_logits).abs().max() / hf_logits.abs().max()).item()
        max_logit_err = max(max_logit_err, err)
    report["checks"]["prefill_logits_max_rel_err"] = max_logit_err
    ok &= max_logit_err < 3e-2

    results = engine.generate(PROMPTS, SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True))
    matches = [r.token_ids == t for r, t in zip(results, hf_tokens)]
    report["checks"]["engine_greedy_identical"] = f"{sum(matches)}/{len(matches)}"
    for r, t, m in zip(results, hf_tokens, matches):
        if not m:
            first = next(i for i, (a, b) in enumerate(zip(r.token_ids, t)) if a != b)
            print(f"engine diverges from HF at token {first}: ours {r.token_ids[first:first+4]} hf {t[first:first+4]}")
    ok &= all(matches)
    hf_texts = [engine.tokenizer.decode(t) for t in hf_tokens]
    del engine, hf
    torch.cuda.empty_cache()

    repo = write_model_repository(tmp, model_dir, instance_group="instance_group [{ count: 1, kind: KIND_GPU, gpus: [0] }]",
                                  max_model_len="2048", kv_cache_memory_fraction="0.5")
    server = start_server(tmp, repo, model_dir, timeout=300)
    try:
        served_ok = 0
        for prompt, expected in zip(PROMPTS, hf_texts):
            req = GenerateRequest(prompt=prompt, max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
            streamed = "".join(c.text for c in stream_grpc(server.grpc_url, server.model, req))
            req.stream = False
            whole = generate_grpc(server.grpc_url, server.model, req)
            good = streamed == expected and whole.text == prompt + streamed
            served_ok += good
            if not good:
                print(f"served text differs for {prompt[:30]!r}:\n  served {streamed!r}\n  hf     {expected!r}")
        report["checks"]["served_greedy_identical_to_hf"] = f"{served_ok}/{len(PROMPTS)}"
        ok &= served_ok == len(PROMPTS)
        log = server.log()
        report["checks"]["instance_line"] = next((l for l in log.splitlines() if "llm:" in l and "KV" in l), "")
    finally:
        stop_server(server)
    report["ok"] = bool(ok)
    (out / "gpu_e2e.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
