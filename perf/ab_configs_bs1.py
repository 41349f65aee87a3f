"""Batch-1 decode under several settings side by side, alternating, each run in its own process
(GPU; an A/B is only meaningful within one device call: machines differ by 10-30%).

    python3 perf/ab_configs_bs1.py --model-dir DIR --out FILE.json \
        --config 'name=base LLM_FUSED_DECODE_ATTENTION=0' --config 'name=fused LLM_FUSED_DECODE_ATTENTION=1' \
        [--config 'name=old tree=/path/to/other/checkout'] [--rounds 2]

A config is a name, optionally another source tree to run (`tree=`, default this checkout), and
environment variables. Every round runs each config once: an engine with max_num_seqs=1 (a few
CUDA graphs, so it starts in seconds) decodes 256 tokens after a 128-token prompt twice (tok/s of
each), the batch-1 graph replay is timed alone (ms), and a 64-token greedy continuation of a fixed
prompt is hashed, so runs that should give the same tokens can be seen to. perf/bench_engine.py's
figure (max_num_seqs=256) is the standard one; this one is for comparing settings.
Writes FILE.json (device, command, git commit, one record per run) after every run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from perf.meta import git_commit  # noqa: E402

# One run, in a child process started in the config's tree (so its engine and kernels are used).
CHILD = r'''
import hashlib, json, sys
sys.path.insert(0, ".")
import triton.testing
from perf.bench_engine import decode_tokps
from engine import EngineConfig, LLMEngine, SamplingParams
from engine.step_shapes import StepShape
engine = LLMEngine(EngineConfig(model_dir=sys.argv[1], device="cuda", max_model_len=1024, max_num_seqs=1,
                                max_num_batched_tokens=256, kv_cache_memory_fraction=0.3))
tokps = [decode_tokps(engine, 1, 128, 256) for _ in range(2)]
graphs = engine.runner.graphs
graph_ms = None
if graphs is not None:
    graphs.fill_inert(StepShape(1, 1, True))
    graph_ms = triton.testing.do_bench(graphs.graphs[StepShape(1, 1, True)].replay, warmup=20, rep=200,
                                       return_mode="median")
engine.add_request("ab", list(range(100, 228)), SamplingParams(max_tokens=64, temperature=0, ignore_eos=True))
tokens = []
while engine.has_unfinished():
    for out in engine.step():
        tokens = out.token_ids
digest = hashlib.md5(str(list(tokens)).encode()).hexdigest()[:10]
print("RESULT", json.dumps(dict(tokps=tokps, graph_ms=graph_ms, tokens=digest)))
'''


def parse_config(spec: str) -> dict:
    """'name=x [tree=DIR] VAR=VALUE ...' -> {name, tree, env}."""
    fields = dict(item.split("=", 1) for item in spec.split())
    if "name" not in fields:
        raise SystemExit(f"--config needs name=...: {spec!r}")
    name, tree = fields.pop("name"), fields.pop("tree", str(REPO))
    return dict(name=name, tree=tree, env=fields)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--out", required=True, help="JSON file")
    ap.add_argument("--config", action="append", required=True, help="'name=x [tree=DIR] VAR=VALUE ...'")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=150, help="seconds per run")
    args = ap.parse_args()
    import torch
    configs = [parse_config(c) for c in args.config]
    report = dict(device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                  command=" ".join(["python3"] + sys.argv), git_commit=git_commit(), runs=[])
    for _ in range(args.rounds):
        for cfg in configs:
            t0 = time.time()
            try:
                proc = subprocess.run([sys.executable, "-c", CHILD, os.path.abspath(args.model_dir)],
                                      cwd=cfg["tree"], env={**os.environ, **cfg["env"]}, capture_output=True,
                                      text=True, timeout=args.timeout)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                run = json.loads(lines[-1][len("RESULT "):]) if lines else {"error": proc.stderr[-2000:]}
            except subprocess.TimeoutExpired:
                run = {"error": f"timed out after {args.timeout} s"}
            run.update(cfg, seconds=round(time.time() - t0, 1))
            report["runs"].append(run)
            shown = {k: v for k, v in run.items() if k not in ("error", "tree")}
            print(json.dumps(shown), run.get("error", "")[-600:], flush=True)
            Path(args.out).write_text(json.dumps(report, indent=1))
    return 0 if all("error" not in r for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
