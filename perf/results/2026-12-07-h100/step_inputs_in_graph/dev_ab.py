"""Scratch (session 28): batch-1 1B decode of several source trees / settings side by side, each
run in its own process (max_num_seqs=1 engines: few graphs, fast start), alternating."""
import json, os, subprocess, sys, time
MODEL, OUT = sys.argv[1], sys.argv[2]
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
configs = json.loads(sys.argv[3])   # [[name, tree, {env}], ...]
results = []
for name, tree, env in configs:
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", CHILD, os.path.abspath(MODEL)], cwd=tree, env={**os.environ, **env},
                       capture_output=True, text=True, timeout=150)
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT")]
    res = json.loads(line[0][7:]) if line else {"error": p.stderr[-2000:]}
    res.update(name=name, tree=tree, env=env, secs=round(time.time() - t0, 1))
    results.append(res)
    print(json.dumps({k: v for k, v in res.items() if k != "error"}), res.get("error", "")[-600:], flush=True)
    json.dump(dict(device=__import__("torch").cuda.get_device_name(), command=" ".join(sys.argv), results=results),
              open(OUT, "w"), indent=1)
