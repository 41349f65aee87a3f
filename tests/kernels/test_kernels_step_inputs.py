"""prepare_step_inputs (kernels/step_inputs.py), the step's first kernel, against the reference,
and the greedy kernel's outputs for CUDA graphs (ids_out, host_addr).

Fresh random steps every run: ragged token counts, sequences with and without a token to fill in,
padding sequences, tables narrower than the buffer. Outputs start poisoned, so an element the
kernel should not touch (table columns past the width, rows past S) is checked to be unchanged.
"""

from __future__ import annotations

import random

import pytest
import torch

from kernel_testing import DEVICE, gpu_only
from kernels import reference as ref_ops


def _ops():
    from kernels import triton_ops
    return triton_ops


def random_step(rng: random.Random, S: int, pad: int, max_blocks: int):
    """(inputs as a dict of int64 tensors, tables_in, feedback) for S real + pad padding sequences."""
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    lens = [rng.choice([1, 1, rng.randint(1, 9)]) for _ in range(S)]
    T = sum(lens) + rng.randint(0, 3)   # padding tokens after the last sequence
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    cu += [cu[-1]] * pad
    ctx = [rng.randint(n, 16 * max_blocks // 2) for n in lens] + [0] * pad
    feedback = torch.randint(0, 50_000, (S + pad + 4,), dtype=torch.long, generator=g)
    fill = [rng.randrange(len(feedback)) if n == 1 and rng.random() < 0.6 else -1 for n in lens] + [-1] * pad
    width = rng.randint(1, max_blocks - 1)
    tables = torch.randint(0, 10_000, ((S + pad) * width,), dtype=torch.long, generator=g)
    ids = torch.randint(0, 50_000, (T,), dtype=torch.long, generator=g)
    for s, src in enumerate(fill):
        if src >= 0:
            ids[cu[s]] = 0   # placeholder, as the runner packs it
    t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return dict(input_ids=ids, cu_seqlens=t(cu), context_lens=t(ctx), fill_src=t(fill),
                table_width=t([width])), tables, feedback


@pytest.mark.parametrize("size", ["small"] * 5 + ["wide"])
def test_prepare_step_inputs_matches_reference(size):
    seed = random.randrange(2**32)   # fresh every run; in every failure message
    rng = random.Random(seed)
    if size == "small":   # one program
        S, pad, max_blocks = rng.randint(1, 12), rng.choice([0, 0, 3]), rng.randint(4, 40)
    else:   # tables of several programs' blocks
        S, pad, max_blocks = rng.randint(20, 40), 3, rng.randint(200, 300)
    inputs, tables_in, feedback = random_step(rng, S, pad, max_blocks)
    n = S + pad
    results = []
    for ops in (ref_ops, _ops()):
        args = {k: v.clone().to(DEVICE) for k, v in inputs.items()}
        out_t = torch.full((n + 2, max_blocks), -7, dtype=torch.int32, device=DEVICE)
        out_c = torch.full((n + 1,), -7, dtype=torch.int32, device=DEVICE)
        out_u = torch.full((n + 2,), -7, dtype=torch.int32, device=DEVICE)
        ops.prepare_step_inputs(args["input_ids"], args["cu_seqlens"], args["context_lens"], args["fill_src"],
                                feedback.to(DEVICE), args["table_width"], tables_in.to(DEVICE), out_t,
                                out_c[:n], out_u[:n + 1])
        results.append((args["input_ids"].cpu(), out_t.cpu(), out_c.cpu(), out_u.cpu()))
    (ids_r, t_r, c_r, u_r), (ids_k, t_k, c_k, u_k) = results
    assert torch.equal(ids_k, ids_r), seed
    assert torch.equal(t_k, t_r) and torch.equal(c_k, c_r) and torch.equal(u_k, u_r), seed
    # What the reference itself must have done, spelled out:
    width = int(inputs["table_width"])
    cu, fill = inputs["cu_seqlens"], inputs["fill_src"]
    for s in range(S):   # padding sequences have no token
        token = feedback[fill[s]] if fill[s] >= 0 else inputs["input_ids"][cu[s]]
        assert ids_r[cu[s]] == token, seed
    assert torch.equal(t_r[:n, :width], tables_in[:n * width].view(n, width).int())
    assert (t_r[:n, width:] == -7).all() and (t_r[n:] == -7).all()      # untouched beyond the step
    assert torch.equal(c_r[:n], inputs["context_lens"].int()) and c_r[n] == -7
    assert torch.equal(u_r[:n + 1], cu.int()) and u_r[n + 1] == -7


def test_argmax_ids_out_is_where_the_tokens_go():
    x = torch.randn(3, 3000, device=DEVICE)
    ids_out = torch.full((5,), -1, dtype=torch.long, device=DEVICE)
    greedy = torch.empty(6, dtype=torch.float64, device=DEVICE)
    ids, _ = _ops().argmax_logsumexp(x, greedy_out=greedy, ids_out=ids_out[:3])
    assert ids.data_ptr() == ids_out.data_ptr()
    assert ids_out[:3].tolist() == x.argmax(dim=-1).tolist() and ids_out[3:].tolist() == [-1, -1]


@gpu_only
def test_argmax_writes_greedy_results_to_the_host_address_it_reads():
    """The address travels in device memory (a CUDA graph's step inputs); 0 writes nothing."""
    x = torch.randn(4, 5000, device="cuda")
    greedy = torch.empty(8, dtype=torch.float64, device="cuda")
    host = torch.full((8,), -1.0, dtype=torch.float64, pin_memory=True)
    addr = torch.tensor([0], dtype=torch.long, device="cuda")
    graph = torch.cuda.CUDAGraph()
    _ops().argmax_logsumexp(x, greedy_out=greedy, host_addr=addr)   # warm-up (compiles)
    with torch.cuda.graph(graph):
        _ops().argmax_logsumexp(x, greedy_out=greedy, host_addr=addr)
    graph.replay()
    torch.cuda.synchronize()
    assert (host == -1).all()
    for _ in range(2):   # fresh logits each replay: the host buffer follows
        x.copy_(torch.randn(4, 5000, device="cuda"))
        addr.fill_(host.data_ptr())
        graph.replay()
        torch.cuda.synchronize()
        assert host.tolist() == greedy.tolist()
        assert host[:4].tolist() == x.argmax(dim=-1).double().tolist()
