"""Scratch: batch-1 x 4096 decode attention in a graph of 16 calls, over splits and tiles."""
import json, sys
import torch
sys.path.insert(0, "perf"); sys.path.insert(0, ".")
from perf.bench_kernels import _decode_inputs, paged_kv, graphed, time_ms, tbps
from kernels import triton_ops
from kernels.attention import AttnConfig
q, _, _, meta, kv_bytes = _decode_inputs(1, 4096)
n = 16
caches = [paged_kv(1, 4096, 8, 128)[:2] for _ in range(n)]
res = {}
for splits in (16, 32, 64):
    for bn, w, st in ((64, 4, 1), (64, 4, 2), (128, 4, 1), (128, 8, 1), (32, 4, 1)):
        cfg = AttnConfig(block_m=16, block_n=bn, num_warps=w, num_stages=st)
        fns = [lambda k=k, v=v: triton_ops.paged_attention(q, k, v, num_splits=splits, config=cfg, **meta) for k, v in caches]
        try:
            ms = time_ms(graphed(lambda: [f() for f in fns])) / n
        except Exception as e:
            print(splits, bn, w, st, "failed", type(e).__name__, e); continue
        key = f"s{splits}_n{bn}_w{w}_st{st}"
        res[key] = tbps(kv_bytes, ms)
        print(f"{key}: {res[key]:.3f} TB/s ({ms*1e3:.2f} us)", flush=True)
json.dump(res, open(sys.argv[1], "w"), indent=1)
