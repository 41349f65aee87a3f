"""Offline engine benchmark (no server): batch-1 decode speed against the bandwidth roofline, and
output throughput at a few batch sizes.

    python perf/bench_engine.py --size llama-3.2-1b --out DIR [--tag 1b]

Batch-1 decode reads every weight once per token, so its ceiling is copy bandwidth / weight bytes
(KV-cache reads at these context lengths are under 1% of that). The copy bandwidth is measured in
the same run. Writes DIR/engine_<tag>.json (device, command, git commit, flat metrics).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from perf.meta import git_commit  # noqa: E402


def copy_bandwidth_tbps(nbytes: int = 2 << 30) -> float:
    import triton.testing
    src = torch.randn(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * nbytes / (ms * 1e-3) / 1e12


def decode_tokps(engine, batch: int, prompt_len: int, new_tokens: int) -> float:
    """Output tokens/s of pure decode steps (prefill excluded) at a fixed batch size."""
    from engine import SamplingParams
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    vocab = min(engine.tokenizer.get_vocab_size(), engine.model_config.vocab_size)
    g = torch.Generator().manual_seed(batch)
    for i in range(batch):
        ids = torch.randint(10, vocab, (prompt_len,), generator=g).tolist()
        engine.add_request(f"b{batch}-{i}", ids, params)
    # Run until every sequence has its first token (prefill done), then time the rest.
    while any(s.num_output_tokens == 0 for s in engine.seqs.values()):
        engine.step()
    torch.cuda.synchronize()
    done = sum(s.num_output_tokens for s in engine.seqs.values())
    t0 = time.perf_counter()
    produced = 0
    while engine.has_unfinished():
        produced += sum(len(o.token_ids) for o in engine.step())
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    assert produced == batch * new_tokens - done, (produced, batch, new_tokens, done)
    return produced / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="llama-3.2-1b")
    ap.add_argument("--model-dir", default=None, help="use this checkpoint instead of building one")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--out", default="perf/results/latest")
    ap.add_argument("--batches", default="1,32,128")
    ap.add_argument("--profile", action="store_true", help="cProfile a batch-1 run into DIR/profile_<tag>.txt")
    ap.add_argument("--eager-too", action="store_true", help="also time batch 1 without CUDA graphs")
    ap.add_argument("--sync-too", action="store_true",
                    help="also time every batch with async_scheduling off (tokens read before the next step)")
    args = ap.parse_args()
    from engine import EngineConfig, LLMEngine
    from engine.step_shapes import StepShape
    from tools.random_llama import build

    tag = args.tag or args.size
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir or str(build(Path(tempfile.mkdtemp()) / tag, size=args.size, seed=0,
                                            dtype="bfloat16", device="cuda"))
    copy = copy_bandwidth_tbps()
    metrics = {"copy_tbps": copy}
    engine = LLMEngine(EngineConfig(model_dir=model_dir, device="cuda", max_model_len=4096,
                                    max_num_seqs=256, kv_cache_memory_fraction=0.85))
    weight_bytes = sum(t.numel() * t.element_size() for k, t in engine.runner.model.w.items()
                       if not (k == "lm_head" and engine.model_config.tie_word_embeddings))
    metrics["weight_gb"] = weight_bytes / 1e9
    metrics[f"engine_decode_bs1_{tag}_roofline_tokps"] = copy * 1e12 / weight_bytes
    for b in [int(x) for x in args.batches.split(",")]:
        tokps = decode_tokps(engine, b, prompt_len=128, new_tokens=256 if b == 1 else 128)
        metrics[f"engine_decode_bs{b}_{tag}_tokps"] = tokps
        print(f"batch {b:4d}: {tokps:10.1f} tok/s", flush=True)
    if args.sync_too:   # same engine, same graphs: only the step's order of host and device work differs
        engine.config.async_scheduling = False
        for b in [int(x) for x in args.batches.split(",")]:
            tokps = decode_tokps(engine, b, prompt_len=128, new_tokens=256 if b == 1 else 128)
            metrics[f"engine_decode_bs{b}_{tag}_sync_tokps"] = tokps
            print(f"batch {b:4d} sync: {tokps:10.1f} tok/s", flush=True)
        engine.config.async_scheduling = None
    graphs = engine.runner.graphs
    if graphs is not None:
        # The GPU time of one batch-1 decode step alone (graph replay): the rest of a step's
        # time is host work (scheduling, input copies, sampling, detokenizing).
        import triton.testing
        graphs.fill_inert(StepShape(1, 1, True))   # the buffer holds the last real step's inputs
        metrics[f"engine_decode_bs1_{tag}_graph_ms"] = triton.testing.do_bench(
            graphs.graphs[StepShape(1, 1, True)].replay, warmup=20, rep=200, return_mode="median")
        metrics[f"engine_decode_bs1_{tag}_step_ms"] = 1e3 / metrics[f"engine_decode_bs1_{tag}_tokps"]
    metrics[f"engine_decode_bs1_{tag}_ratio"] = (metrics[f"engine_decode_bs1_{tag}_tokps"]
                                                 / metrics[f"engine_decode_bs1_{tag}_roofline_tokps"])
    if args.profile:
        import cProfile
        import io
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        decode_tokps(engine, 1, prompt_len=128, new_tokens=128)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
        (out / f"profile_{tag}.txt").write_text(buf.getvalue())
    if args.eager_too:
        del engine
        torch.cuda.empty_cache()
        eager = LLMEngine(EngineConfig(model_dir=model_dir, device="cuda", max_model_len=4096,
                                       enforce_eager=True, kv_cache_memory_fraction=0.85))
        metrics[f"engine_decode_bs1_{tag}_eager_tokps"] = decode_tokps(eager, 1, 128, 128)
    commit = git_commit()
    report = {"device": torch.cuda.get_device_name(), "command": " ".join(["python"] + sys.argv),
              "git_commit": commit, "date": time.strftime("%Y-%m-%d"), "metrics": metrics}
    (out / f"engine_{tag}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
