"""Scratch (session 28): batch-1 1B decode with the L2 prefetch side stream in several settings,
each in its own process (the model reads the settings at load), alternating with the baseline."""
import json, os, subprocess, sys, time
MODEL = sys.argv[1]; OUT = sys.argv[2]
CHILD = r'''
import json, os, sys, time, torch, hashlib
sys.path.insert(0, ".")
from perf.bench_engine import decode_tokps
from engine import EngineConfig, LLMEngine, SamplingParams
from engine.step_shapes import StepShape
import triton.testing
e = LLMEngine(EngineConfig(model_dir=sys.argv[1], device="cuda", max_model_len=1024, max_num_seqs=1,
                           max_num_batched_tokens=256, kv_cache_memory_fraction=0.3))
r = [decode_tokps(e, 1, 128, 256) for _ in range(2)]
g = e.runner.graphs
g.fill_inert(StepShape(1, 1, True))
gms = triton.testing.do_bench(g.graphs[StepShape(1, 1, True)].replay, warmup=20, rep=200, return_mode="median")
params = SamplingParams(max_tokens=64, temperature=0, ignore_eos=True)
e.add_request("x", list(range(100, 228)), params)
toks = []
while e.has_unfinished():
    for o in e.step():
        toks = o.token_ids
print("RESULT", json.dumps(dict(tokps=r, graph_ms=gms, tokens=hashlib.md5(str(list(toks)).encode()).hexdigest()[:10])))
'''
configs = [("off", {}), ("o", {"LLM_L2_PREFETCH": "o"}), ("o+384", {"LLM_L2_PREFETCH": "o+384"}),
           ("o+768", {"LLM_L2_PREFETCH": "o+768"}), ("off", {}),
           ("o+384 hint", {"LLM_L2_PREFETCH": "o+384", "LLM_L2_PREFETCH_MODE": "2"}),
           ("o+384 start", {"LLM_L2_PREFETCH": "o+384", "LLM_L2_PREFETCH_AT": "start"}),
           ("o+384 join-mlp", {"LLM_L2_PREFETCH": "o+384", "LLM_L2_PREFETCH_JOIN": "mlp"}),
           ("o+384 p264", {"LLM_L2_PREFETCH": "o+384", "LLM_L2_PREFETCH_PROGRAMS": "264"}),
           ("off", {})]
if len(sys.argv) > 3:
    configs = [c for c in configs if c[0] in sys.argv[3].split(",")]
results = []
for name, env in configs:
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", CHILD, MODEL], env={**os.environ, **env}, capture_output=True, text=True, timeout=150)
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT")]
    res = json.loads(line[0][7:]) if line else {"error": p.stderr[-2000:]}
    res.update(name=name, env=env, secs=round(time.time() - t0, 1))
    results.append(res)
    print(json.dumps({k: v for k, v in res.items() if k != "error"}), res.get("error", "")[-600:], flush=True)
    json.dump(dict(device=__import__("torch").cuda.get_device_name(), command=" ".join(sys.argv), results=results),
              open(OUT, "w"), indent=1)
