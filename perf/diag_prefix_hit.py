"""Diagnostic: where a prefix-cache hit's time to first token goes (GPU only).

    python3 perf/diag_prefix_hit.py --model-dir DIR [--runs 10] [--out FILE]

As perf/bench_scheduler.py measures it (a 2,048-token cached prefix, 16 new tokens, max_tokens 1),
with each hit's host time per engine phase and its graph's GPU time (perf/diag_context_sweep.py's
instrumentation)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from perf.diag_context_sweep import time_steps  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from engine import EngineConfig, LLMEngine, SamplingParams
    engine = LLMEngine(EngineConfig(model_dir=args.model_dir, device="cuda", max_model_len=16384,
                                    kv_cache_memory_fraction=0.5))
    vocab = engine.model_config.vocab_size
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(10, vocab, (2048,), generator=g).tolist()
    one = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    events, phases = time_steps(engine)
    rows = []
    for i in range(args.runs + 1):   # the first one caches the prefix
        ids = prefix + torch.randint(10, vocab, (16,), generator=g).tolist()
        torch.cuda.synchronize()
        events.clear()
        phases.clear()
        t0 = time.perf_counter()
        engine.add_request(f"h{i}", ids, one)
        steps = 0
        while engine.has_unfinished():
            engine.step()
            steps += 1
        ttft = (time.perf_counter() - t0) * 1e3
        torch.cuda.synchronize()
        rows.append({"ttft_ms": round(ttft, 3), "steps": steps,
                     "graph_ms": round(sum(a.elapsed_time(b) for a, b in events), 3),
                     "host_ms": {k: round(v, 3) for k, v in phases.items()}})
        print(rows[-1], flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "command":
                                              "python3 " + " ".join(sys.argv), "runs": rows[1:]}, indent=1))


if __name__ == "__main__":
    main()
