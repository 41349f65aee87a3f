"""Scheduler benchmark (engine in-process, no server): prefix caching and chunked prefill on the GPU.

    python3 perf/bench_scheduler.py --out DIR [--size llama-3.2-1b]

1. Prefix caching: TTFT of a request whose 2,048-token prefix is cached (a previous request shared
   it) against the same request on a cold cache (prefix caching off), median of several runs.
2. Chunked prefill: 32 streams decode; we record their inter-token latencies (ITL) without other
   work, then while 8,192-token prompts arrive (--long-prompts, default 3, one after the other) and
   are prefilled in chunks of max_num_batched_tokens (--budgets: 256, the headline, and 512).
   Reports p50 without and p99 with. (All 32 streams get their tokens in the same steps, so the
   gaps are per step; one prompt's ~35 steps alone would make the p99 their maximum.)
Writes DIR/scheduler.json (device, command, git commit, flat metrics).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from perf.meta import git_commit  # noqa: E402


def random_ids(n: int, vocab: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab, (n,), generator=g).tolist()


def ttft(engine, ids: list[int]) -> float:
    from engine import SamplingParams
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    engine.add_request(f"ttft-{t0}", ids, SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    return (time.perf_counter() - t0) * 1e3


def prefix_ttfts(model_dir: str, prefix_caching: bool, vocab: int, runs: int = 5) -> list[float]:
    from engine import EngineConfig, LLMEngine
    engine = LLMEngine(EngineConfig(model_dir=model_dir, device="cuda", max_model_len=16384,
                                    enable_prefix_caching=prefix_caching, kv_cache_memory_fraction=0.5))
    prefix = random_ids(2048, vocab, 0)
    ttft(engine, prefix + random_ids(16, vocab, 1))            # warm up; caches the prefix if on
    times = [ttft(engine, prefix + random_ids(16, vocab, 100 + i)) for i in range(runs)]
    del engine
    torch.cuda.empty_cache()
    return times


def itl_with_and_without_long_prefill(model_dir: str, vocab: int, budget: int, streams: int = 32,
                                      attention_pairs: int | None = None, long_prompts: int = 3):
    from engine import EngineConfig, LLMEngine, SamplingParams
    engine = LLMEngine(EngineConfig(model_dir=model_dir, device="cuda", max_model_len=16384,
                                    max_num_batched_tokens=budget, kv_cache_memory_fraction=0.5,
                                    max_prefill_attention_pairs=attention_pairs))
    params = SamplingParams(max_tokens=4000, temperature=0, ignore_eos=True)
    for i in range(streams):
        engine.add_request(f"s{i}", random_ids(128, vocab, 10 + i), params)
    while any(s.num_output_tokens == 0 for s in engine.seqs.values()):
        engine.step()

    def decode_gaps(steps: int) -> list[float]:
        gaps, last = [], time.perf_counter()
        for _ in range(steps):
            outs = engine.step()
            now = time.perf_counter()
            if any(o.request_id.startswith("s") and o.token_ids for o in outs):
                gaps.append((now - last) * 1e3)
                last = now
        return gaps

    decode_gaps(20)
    without = decode_gaps(100)
    # Several long prompts, one after the other (distinct tokens: no prefix-cache hits): one
    # prompt's prefill is only ~20-40 steps, whose "p99" would be their maximum.
    with_prefill, steps, long_ms = [], [], []
    last = time.perf_counter()
    for k in range(long_prompts):
        rid = f"long{k}"
        engine.add_request(rid, random_ids(8192, vocab, 999 + k), SamplingParams(max_tokens=1, temperature=0))
        t_long = time.perf_counter()
        while rid in engine.seqs:
            long_seq = engine.seqs[rid]
            before = long_seq.num_computed_tokens
            t0 = time.perf_counter()
            outs = engine.step()
            now = time.perf_counter()
            shape = engine.runner.last_shape
            # What each step launched: the long prompt's chunk (context, tokens), the padded shape.
            steps.append({"ms": round((now - t0) * 1e3, 3), "prompt": k, "context": before,
                          "chunk": long_seq.num_computed_tokens - before,
                          "shape": None if shape is None else [shape.num_tokens, shape.num_seqs, shape.kv_splits]})
            if any(o.request_id.startswith("s") and o.token_ids for o in outs):
                with_prefill.append((now - last) * 1e3)
                last = now
        long_ms.append((time.perf_counter() - t_long) * 1e3)   # its TTFT: what the budget costs it
    with_prefill += decode_gaps(10)
    for rid in list(engine.seqs):
        engine.abort(rid)
    del engine
    torch.cuda.empty_cache()
    return without, with_prefill, long_ms, steps


BUDGETS = "256,512"       # max_num_batched_tokens for the chunked-prefill measurement
HEADLINE_BUDGET = 256


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="llama-3.2-1b")
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--out", default="perf/results/latest")
    ap.add_argument("--attention-pairs", type=int, default=None,
                    help="max_prefill_attention_pairs for the chunked-prefill part (default: the "
                         "engine's, max_num_batched_tokens x 2048; 0: no limit)")
    ap.add_argument("--skip-prefix", action="store_true", help="only the chunked-prefill part")
    ap.add_argument("--budgets", default=BUDGETS, help="max_num_batched_tokens values for the chunked-prefill "
                                                       f"part (the headline is {HEADLINE_BUDGET})")
    ap.add_argument("--long-prompts", type=int, default=3,
                    help="8,192-token prompts prefilled one after the other while the streams decode")
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    from tools.random_llama import build
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir or str(build(Path(tempfile.mkdtemp()) / "m", size=args.size, dtype="bfloat16",
                                            device="cuda"))
    vocab = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
    metrics, runs = {}, {}
    if not args.skip_prefix:
        hit = prefix_ttfts(model_dir, True, vocab)
        miss = prefix_ttfts(model_dir, False, vocab)
        metrics = {"prefix_hit_ttft_ms": statistics.median(hit), "prefix_miss_ttft_ms": statistics.median(miss)}
        metrics["prefix_ttft_speedup"] = metrics["prefix_miss_ttft_ms"] / metrics["prefix_hit_ttft_ms"]
        runs = {"hit": hit, "miss": miss}   # every run, to see the spread
    # The token budget trades prefill speed for decode latency: the headline figures are for
    # HEADLINE_BUDGET; the others show the trade.
    samples = {}
    for budget in budgets:
        without, with_prefill, long_ms, steps = itl_with_and_without_long_prefill(
            model_dir, vocab, budget, attention_pairs=args.attention_pairs, long_prompts=args.long_prompts)
        samples[f"budget{budget}"] = {"without": without, "with_long_prefill": with_prefill,
                                      "long_prefill_steps": steps}
        sfx = "" if budget == HEADLINE_BUDGET else f"_budget{budget}"
        metrics.update({
            f"itl_p50_ms_without{sfx}": pct(without, 50), f"itl_p99_ms_without{sfx}": pct(without, 99),
            f"itl_p50_ms_with_long_prefill{sfx}": pct(with_prefill, 50),
            f"itl_p99_ms_with_long_prefill{sfx}": pct(with_prefill, 99),
            f"long_prefill_steps{sfx}": len(with_prefill), f"long_prefill_ms{sfx}": statistics.median(long_ms),
            f"long_prompts{sfx}": len(long_ms),
        })
        metrics[f"itl_p99_with_over_p50_without{sfx}"] = (metrics[f"itl_p99_ms_with_long_prefill{sfx}"]
                                                         / metrics[f"itl_p50_ms_without{sfx}"])
        print({k: round(v, 3) for k, v in metrics.items()}, flush=True)
    commit = git_commit()
    report = {"device": torch.cuda.get_device_name(), "command": "python3 " + " ".join(sys.argv),
              "git_commit": commit, "date": time.strftime("%Y-%m-%d"), "model": args.size,
              "notes": f"engine in-process (no server); chunked-prefill part: max_num_batched_tokens="
                       f"{HEADLINE_BUDGET} (headline) and {budgets} (suffix _budgetN), "
                       f"{args.long_prompts} long prompts one after the other, "
                       f"max_prefill_attention_pairs={args.attention_pairs} (None: the engine's default)",
              "metrics": metrics,
              "prefix_ttft_runs_ms": runs,
              "itl_samples_ms": samples}   # every gap, in order: where the tail comes from
    (out / "scheduler.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
