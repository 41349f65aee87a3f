"""Diagnostic: how one mixed step's time depends on the long prompt's context (GPU only).

    python3 perf/diag_context_sweep.py --model-dir DIR [--prompt 12000] [--chunk 128] [--streams 32]

Runs one long prompt in fixed chunks (max_prefill_attention_pairs=0) beside `streams` decoding
requests and prints, per step, the chunk's context, the padded shape and the step's wall time
(synchronized, so GPU time + host time of one step)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def time_steps(engine) -> tuple[list, dict[str, float]]:
    """Instrument an engine: CUDA events around each graph replay (its GPU time) and the host
    time of each phase of a step (no extra synchronization: a phase that blocks on the device,
    e.g. a pinned or device allocation, shows up as its own time). Returns (the events list,
    filled per replay, and the phase-time dict in ms, summed until cleared)."""
    graphs, replay = engine.runner.graphs, engine.runner.graphs.replay
    events: list = []

    def timed_replay(shape, width):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        out = replay(shape, width)
        b.record()
        events.append((a, b))
        return out
    graphs.replay = timed_replay
    phases: dict[str, float] = {}

    def timed(obj, name, label):
        inner = getattr(obj, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                phases[label] = phases.get(label, 0.0) + (time.perf_counter() - t) * 1e3
        setattr(obj, name, wrapper)
    for obj, name in ((engine, "add_request"), (engine.scheduler, "schedule"), (engine.runner, "prepare"),
                      (engine.runner, "run"), (engine.sampler, "sample"), (engine, "_read_tokens"),
                      (engine.block_manager, "commit")):
        timed(obj, name, name.strip("_"))
    return events, phases


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--prompt", type=int, default=12000)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--splits", type=int, default=None, help="override ShapeBuckets.LONG_CONTEXT_SPLITS")
    ap.add_argument("--async-scheduling", action="store_true", help="as the engine runs by default")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from engine import EngineConfig, LLMEngine, SamplingParams
    from engine.step_shapes import ShapeBuckets
    if args.splits is not None:
        ShapeBuckets.LONG_CONTEXT_SPLITS = args.splits
    engine = LLMEngine(EngineConfig(model_dir=args.model_dir, device="cuda", max_model_len=16384,
                                    max_num_batched_tokens=args.chunk + args.streams,
                                    async_scheduling=args.async_scheduling,
                                    kv_cache_memory_fraction=0.5, max_prefill_attention_pairs=0))
    vocab = engine.model_config.vocab_size
    g = torch.Generator().manual_seed(0)
    params = SamplingParams(max_tokens=4000, temperature=0, ignore_eos=True)
    for i in range(args.streams):
        engine.add_request(f"s{i}", torch.randint(10, vocab, (128,), generator=g).tolist(), params)
    for _ in range(5):
        engine.step()
    engine.add_request("long", torch.randint(10, vocab, (args.prompt,), generator=g).tolist(),
                       SamplingParams(max_tokens=1, temperature=0))
    events, phases = time_steps(engine)
    import gc
    collections = [0]
    gc.callbacks.append(lambda phase, info: collections.__setitem__(0, collections[0] + (phase == "start")))
    rows = []
    while "long" in engine.seqs:
        seq = engine.seqs["long"]
        before = seq.num_computed_tokens
        if not args.async_scheduling:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.step()
        if not args.async_scheduling:
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1e3
        s = engine.runner.last_shape
        done = [(a, b) for a, b in events if b.query()]   # async: the last replay may still run
        gpu = sum(a.elapsed_time(b) for a, b in done)
        events[:] = [e for e in events if e not in done]
        rows.append({"context": before, "ms": round(ms, 3), "graph_ms": round(gpu, 3), "gcs": collections[0],
                     "host_ms": {k: round(v, 3) for k, v in phases.items()},
                     "shape": None if s is None else [s.num_tokens, s.num_seqs, s.kv_splits]})
        collections[0] = 0
        phases.clear()
        print(rows[-1], flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "device": torch.cuda.get_device_name(),
                                              "steps": rows}, indent=1))


if __name__ == "__main__":
    main()
