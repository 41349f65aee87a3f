# scratch (not committed): where does decode_attention_block's time go? globaltimer stamps per
# program at each phase boundary, for barrier / preload variants, in a CUDA graph of 16 calls
# (distinct weights per call), plus the unfused ops of the same work for comparison.
import importlib.util, json, os, re, sys
import torch, triton
sys.path[:0] = [".", "tests/kernels"]
from kernels import decode_block as base_mod, triton_ops
from test_kernels_decode_block import _inputs

SRC = open("kernels/decode_block.py").read()
SRC = SRC.replace("from . import reference\n", "from kernels import reference\n").replace("from ._alloc", "from kernels._alloc") \
         .replace("from .heuristics", "from kernels.heuristics").replace("from .pdl", "from kernels.pdl")
STAMP_FN = '''
from triton.language.extra.cuda import globaltimer
_STAMPS = None

@triton.jit
def _st(stamp_ptr, pid, j: tl.constexpr):
    tl.debug_barrier()
    tl.store(stamp_ptr + pid * 16 + j, globaltimer())

@triton.jit
def _wait_u64(bar_ptr, target):
    tl.debug_barrier()
    r = tl.inline_asm_elementwise(
        "{ .reg .pred p0, p1; .reg .u32 t; .reg .u64 v; mov.u32 t, %tid.x; setp.ne.u32 p0, t, 0; "
        "@p0 bra DONE${:uid}; red.release.gpu.global.add.u64 [$1], 1; SPIN${:uid}: "
        "ld.acquire.gpu.global.u64 v, [$1]; setp.lt.u64 p1, v, $2; @p1 bra SPIN${:uid}; DONE${:uid}: mov.u32 $0, 0; }",
        "=r,l,l", [bar_ptr, target], dtype=tl.int32, is_pure=False, pack=1)
    tl.debug_barrier()
    return r
'''

def variant(name, barrier_asm=False, preload_o=True):
    s = SRC.replace("__all__ =", STAMP_FN + "\n__all__ =")
    s = s.replace("out_ptr, bar_ptr,\n", "out_ptr, bar_ptr, stamp_ptr,\n")
    s = s.replace("residual_out, qkv, part_m, part_l, part_acc, attn, out, barrier,",
                  "residual_out, qkv, part_m, part_l, part_acc, attn, out, barrier, _STAMPS,")
    marks = ["    # Before the PDL wait", "    # ---- phase 0", "    if FIRST == 0 and FUSED:",
             "    # ---- phase 1", "    if LAST >= 3:\n        # The o slice", "    if FIRST <= 1 and LAST >= 2:",
             "    # ---- phase 2", "    if FIRST <= 2 and LAST >= 3:", "    # ---- phase 3", "    # The next kernel may launch only now"]
    for j, m in enumerate(marks):
        assert s.count(m) == 1, m
        s = s.replace(m, f"    _st(stamp_ptr, pid, {j})\n" + m)
    if barrier_asm:
        s = s.replace("    cols = tl.arange(0, BLOCK_H)\n    hmask", "    bar_base = (tl.load(bar_ptr, volatile=True) // nprog) * nprog\n    cols = tl.arange(0, BLOCK_H)\n    hmask", 1)
        for k in (1, 2, 3):
            s = s.replace("        _grid_barrier(bar_ptr, nprog)\n", f"        _wait_u64(bar_ptr, bar_base + {k} * nprog)\n", 1)
        s = s.replace("_barriers[key] = torch.zeros(2, dtype=torch.int32, device=device)",
                      "_barriers[key] = torch.zeros(16, dtype=torch.int64, device=device)")
    if not preload_o:
        s = s.replace("    if FIRST <= 3 and LAST >= 3:\n        # The o slice", "    if False:\n        # The o slice")
        s = s.replace("    if LAST >= 3:\n        a = tl.load", "    if LAST >= 3:\n        w_o = _load_rows(o_w_ptr, pid * o_rows, o_rows, HIDDEN, BLOCK_O, O_BLOCK, BLOCK_O)\n        a = tl.load")
    path = f"/tmp/dbv_{name}.py"
    open(path, "w").write(s)
    spec = importlib.util.spec_from_file_location(f"dbv_{name}", path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

N = 16
dtype = torch.bfloat16
base = _inputs(385, 2048, 32, 8, 64, dtype, True)
layers = []
for _ in range(N):
    d = dict(base)
    for k in ("qkv_w", "o_w", "norm_w"):
        d[k] = base[k][torch.randperm(base[k].shape[0], device="cuda")].contiguous() if k != "norm_w" else base[k].clone()
    d["h"] = torch.randn_like(base["h"]); d["residual"] = torch.randn_like(base["h"])
    layers.append(d)

def bench(fn_per_layer):
    for L in layers: fn_per_layer(L, 0)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for c, L in enumerate(layers): fn_per_layer(L, c)
    return triton.testing.do_bench(g.replay, warmup=20, rep=200, return_mode="median") * 1e3 / N

CU = torch.tensor([0, 1], dtype=torch.int32, device="cuda")
res = {}
def unfused(L, c):
    triton_ops  # the engine's ops for the same work
    from kernels import reference as R
    x, r = triton_ops.fused_add_rms_norm(L["h"], L["residual"], L["norm_w"], 1e-5)
    qkv = triton_ops.linear(x, L["qkv_w"])
    q, k, v = qkv.split([2048, 512, 512], dim=-1)
    q, _ = triton_ops.rope_and_write_kv(q.view(1, 32, 64), k.view(1, 8, 64), v.view(1, 8, 64), L["positions"], L["cos_sin_cache"], L["k_cache"], L["v_cache"], L["slot_mapping"])
    o = triton_ops.paged_attention(q, L["k_cache"], L["v_cache"], L["block_tables"], L["context_lens"], CU, 1, L["softmax_scale"], max_context_len=512)
    return triton_ops.linear(o.reshape(1, 2048), L["o_w"])
res["unfused_us"] = bench(unfused)
print("unfused ops", round(res["unfused_us"], 2), "us per layer", flush=True)
ref_out = [None]
for name, kw in [("tree", {})]:
    try:
        mod = variant(name, **kw)
        stamps = torch.zeros(N, 132, 16, dtype=torch.int64, device="cuda")
        def fused(L, c, mod=mod, stamps=stamps):
            mod._STAMPS = stamps[c]
            return mod.decode_attention_block(**L, max_context_len=512)
        us = bench(fused)
        torch.cuda.synchronize()
        st = stamps[N // 2].double().cpu()
        t0 = st[:, 1].min()
        rel = (st[:, :10] - t0) / 1000.0
        med = rel.median(dim=0).values.tolist(); mx = rel.max(dim=0).values.tolist()
        out, _ = mod.decode_attention_block(**dict(layers[0], k_cache=layers[0]["k_cache"].clone(), v_cache=layers[0]["v_cache"].clone()))
        want, _ = base_mod.decode_attention_block(**dict(layers[0], k_cache=layers[0]["k_cache"].clone(), v_cache=layers[0]["v_cache"].clone()), fused=False)
        k = mod._decode_block_kernel.device_caches[0][0]
        regs = [(v.n_regs, v.n_spills) for v in k.values()]
        res[name] = dict(us=us, median_us=med, max_us=mx, same_as_phased=bool(torch.equal(out, want)), regs=regs)
        print(name, round(us, 2), "us/call; stamps med", [round(x, 2) for x in med], "max", [round(x, 2) for x in mx], "same", res[name]["same_as_phased"], "regs", regs, flush=True)
    except Exception as e:
        print(name, "failed:", repr(e)[:500], flush=True)
json.dump(res, open(sys.argv[1], "w"), indent=1)
