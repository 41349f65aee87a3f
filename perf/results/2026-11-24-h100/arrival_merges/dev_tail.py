# scratch: register use and in-graph time of the attention split merge / linear split sum, per tail variant
import os, sys, json, torch, triton, triton.testing
sys.path.insert(0, os.getcwd())
from kernels import triton_ops
from kernels.linear import small_linear, LinearConfig
import kernels.attention as A, kernels.linear as L


def stats(jf):
    out = []
    for dev, cache in jf.device_caches.items():
        for key, k in cache[0].items():
            try:
                k._init_handles()
            except Exception:
                pass
            out.append({"regs": getattr(k, "n_regs", None), "spills": getattr(k, "n_spills", None)})
    return out


def graph_us(fns):
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        [f() for f in fns]; [f() for f in fns]
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        [f() for f in fns]
    return triton.testing.do_bench(g.replay, warmup=20, rep=200, return_mode="median") * 1e3 / len(fns)


tag = sys.argv[1]
res = {}
# attention: B1 x ctx, GQA 32/8, D128, 16 calls each over its own cache
for ctx, splits in ((4096, 32), (512, 32)):
    fns = []
    for i in range(16):
        nblk = ctx // 16
        kc = torch.randn(nblk + 2, 16, 8, 128, dtype=torch.bfloat16, device="cuda")
        vc = torch.randn_like(kc)
        q = torch.randn(1, 32, 128, dtype=torch.bfloat16, device="cuda")
        bt = torch.randperm(nblk + 2, device="cuda")[:nblk].to(torch.int32)[None].contiguous()
        cl = torch.tensor([ctx], dtype=torch.int32, device="cuda")
        cu = torch.tensor([0, 1], dtype=torch.int32, device="cuda")
        fns.append(lambda q=q, kc=kc, vc=vc, bt=bt, cl=cl, cu=cu: triton_ops.paged_attention(
            q, kc, vc, bt, cl, cu, 1, 128 ** -0.5, num_splits=splits, max_context_len=4096))
    res[f"attn_ctx{ctx}_s{splits}_us"] = graph_us(fns)
res["attn_kernels"] = stats(A._paged_attention_kernel)
for name, (n, k, split) in {"down_s4": (2048, 8192, 4), "o_s2": (2048, 2048, 2), "o_s1": (2048, 2048, 1), "qkv_s2": (3072, 2048, 2)}.items():
    ws = [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * k ** -0.5 for _ in range(max(8, (256 << 20) // (n * k * 2)))]
    x = torch.randn(1, k, dtype=torch.bfloat16, device="cuda")
    bn = 64 if k >= 8192 else 32
    cfg = LinearConfig(block_n=bn, block_k=128 if k >= 8192 else 256, split_k=split, num_warps=4, num_stages=5)
    res[f"lin_{name}_us"] = graph_us([lambda w=w: small_linear(x, w, cfg) for w in ws])
res["lin_kernels"] = stats(L._small_linear_kernel)
print(tag, json.dumps(res))
