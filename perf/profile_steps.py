"""Where does an engine step's time go? torch.profiler tables for the step kinds the benchmarks
care about (GPU only; a diagnostic, not a benchmark):

    python3 perf/profile_steps.py --out DIR [--size llama-3.2-1b]

  decode_bs1      one sequence decoding (CUDA graph path)
  prefix_hit      16 new prompt tokens after a cached 2,048-token prefix
  prefix_miss     a 2,064-token prompt on a cold cache
  mixed_512_32    a 512-token prefill chunk (with cached context) beside 32 decoding streams
                  (--chunk sets the chunk size: 224 is bench_scheduler.py's budget-256 step)

For each: wall time per step (synchronized), then the top ops by self CPU time and by GPU time,
written to DIR/profile_steps.txt.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def random_ids(n: int, vocab: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab, (n,), generator=g).tolist()


def profile(name: str, fn, lines: list[str], reps: int = 3) -> None:
    from torch.profiler import ProfilerActivity, profile as tprofile
    walls = []
    for _ in range(reps):
        setup = fn()
        sync()
        t0 = time.perf_counter()
        setup()
        sync()
        walls.append((time.perf_counter() - t0) * 1e3)
    step = fn()
    sync()
    with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        sync()
    ka = prof.key_averages()
    lines.append(f"\n==== {name}: wall ms per step {[round(w, 3) for w in walls]}")
    lines.append(ka.table(sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=60))
    lines.append(ka.table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=60))
    print("\n".join(lines[-3:]), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="llama-3.2-1b")
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--out", default="perf/results/latest")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--chunk", type=int, default=512, help="prefill chunk of the mixed step")
    args = ap.parse_args()
    from engine import EngineConfig, LLMEngine, SamplingParams
    from tools.random_llama import build
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir or str(build(Path(tempfile.mkdtemp()) / "m", size=args.size,
                                            dtype="bfloat16", device=args.device))
    engine = LLMEngine(EngineConfig(model_dir=model_dir, device=args.device, max_model_len=16384,
                                    max_num_batched_tokens=4096, kv_cache_memory_fraction=0.5))
    vocab = engine.model_config.vocab_size
    limit = engine.max_model_len
    lines: list[str] = []
    one = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    prefix = random_ids(min(2048, limit // 2), vocab, 0)
    counter = iter(range(10**6))

    def drain():
        while engine.has_unfinished():
            engine.step()

    # decode batch 1: a running sequence, each call is one step
    engine.add_request("d", random_ids(128, vocab, 5), SamplingParams(max_tokens=min(2000, limit - 200), temperature=0,
                                                                     ignore_eos=True))
    engine.step()
    profile("decode_bs1", lambda: engine.step, lines, reps=5)
    engine.abort("d")

    def hit():
        engine.add_request(f"h{next(counter)}", prefix + random_ids(16, vocab, next(counter)), one)
        return drain
    engine.add_request("warm", prefix + random_ids(16, vocab, 1), one)
    drain()
    profile("prefix_hit", hit, lines)

    def miss():
        engine.add_request(f"m{next(counter)}", random_ids(len(prefix) + 16, vocab, 1000 + next(counter)), one)
        return drain
    profile("prefix_miss", miss, lines)

    # 32 streams decoding, then an 8k prompt in chunks: profile one mixed step
    engine.scheduler.max_num_batched_tokens = args.chunk + 32
    long_params = SamplingParams(max_tokens=min(4000, limit - 200), temperature=0, ignore_eos=True)
    for i in range(32):
        engine.add_request(f"s{i}", random_ids(128, vocab, 10 + i), long_params)
    while any(s.num_output_tokens == 0 for s in engine.seqs.values()):
        engine.step()

    def mixed():
        rid = f"long{next(counter)}"
        engine.add_request(rid, random_ids(min(8192, limit - 8), vocab, 2000 + next(counter)), one)
        engine.step()   # first chunk
        engine.step()   # second chunk (has cached context)
        return engine.step
    profile(f"mixed_{args.chunk}_32", mixed, lines)
    (out / "profile_steps.txt").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
