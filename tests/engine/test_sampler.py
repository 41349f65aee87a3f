"""Sampler: greedy, seeded reproducibility, top-k/top-p/temperature distributions, penalties, min_tokens.

Distributions are checked against probabilities computed here from the logits (softmax, sort,
cumulative sums), with many draws; the sampler's generators are seeded, so the draws (and the tests)
are deterministic.
"""
from __future__ import annotations

import math

import pytest
import torch

from engine import SamplingParams
from engine.sampler import Sampler
from engine_testing import PROMPTS, drive, fake_seq, joined, run_requests

CPU = torch.device("cpu")


def seqs_for(params, n, prompt=(3, 4, 5), outputs=()):
    return [fake_seq(list(prompt) + list(outputs), params, request_id=f"s{i}", num_prompt=len(prompt))
            for i in range(n)]


def allowed_probs(logits: torch.Tensor, temperature=1.0, top_k=-1, top_p=1.0) -> torch.Tensor:
    """The distribution the sampler must draw from, computed independently in float64."""
    x = logits.double() / temperature
    p = torch.softmax(x, dim=-1)
    order = sorted(range(len(p)), key=lambda i: -p[i].item())
    keep = order if top_k in (-1, 0) else order[:top_k]
    if top_p < 1.0:
        q = torch.softmax(x[keep], dim=-1)
        kept, mass = [], 0.0
        for j, tok in enumerate(keep):
            kept.append(tok)
            mass += q[j].item()
            if mass >= top_p:
                break
        keep = kept
    out = torch.zeros_like(p)
    out[keep] = torch.softmax(x[keep], dim=-1)
    return out


def chi_square(counts: torch.Tensor, probs: torch.Tensor):
    """Pearson statistic over cells with expected count >= 5 (others pooled); returns (stat, dof)."""
    n = counts.sum().item()
    exp = probs * n
    big = exp >= 5
    stat = (((counts[big] - exp[big]) ** 2) / exp[big]).sum().item()
    cells = int(big.sum())
    rest_exp = exp[~big].sum().item()
    if rest_exp > 0:
        rest_obs = counts[~big].sum().item()
        stat += (rest_obs - rest_exp) ** 2 / max(rest_exp, 1e-9)
        cells += 1
    return stat, cells - 1


def chi_square_ok(counts, probs):
    stat, dof = chi_square(counts.double(), probs)
    # ~ p-value 1e-6 bound (Wilson-Hilferty); the draws are seeded, so this never flickers.
    z = 4.75
    bound = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3 if dof > 0 else 0
    return stat <= bound, (stat, dof, bound)


def draw(logits_row: torch.Tensor, params: SamplingParams, n: int, seed=0, sampler=None):
    sampler = sampler or Sampler(CPU, seed)
    seqs = seqs_for(params, n)
    res = sampler(logits_row[None].expand(n, -1).clone(), seqs)
    return torch.tensor(res.token_ids)


def peaked_logits(vocab=40, seed=0, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, generator=g) * spread


# ----- greedy -------------------------------------------------------------------------------------
def test_greedy_is_argmax_and_reports_raw_logprobs():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 50, generator=g) * 4
    params = SamplingParams(temperature=0.0, logprobs=3)
    res = Sampler(CPU)(logits, seqs_for(params, 6))
    assert res.token_ids == logits.argmax(dim=-1).tolist()
    lp = torch.log_softmax(logits.double(), dim=-1)
    for i, t in enumerate(res.token_ids):
        assert res.logprobs[i] == pytest.approx(lp[i, t].item(), abs=1e-5)
        top_ids = lp[i].topk(3).indices.tolist()
        assert [tid for tid, _ in res.top_logprobs[i]] == top_ids
        assert [v for _, v in res.top_logprobs[i]] == pytest.approx(lp[i, top_ids].tolist(), abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_all_greedy_batch_reports_argmax_and_raw_logprobs(dtype):
    """The all-greedy path (its logprobs come out of the argmax kernel) and the general one (a
    penalized row in the batch) report the same tokens and log-probabilities, in the logits'
    own dtype (the runner hands over bf16 logits on the GPU)."""
    g = torch.Generator().manual_seed(7)
    logits = (torch.randn(5, 40, generator=g) * 4).to(dtype)
    lp = torch.log_softmax(logits.double(), dim=-1)
    greedy = Sampler(CPU)(logits, seqs_for(SamplingParams(temperature=0.0), 5))
    assert greedy.token_ids == logits.float().argmax(dim=-1).tolist()
    assert greedy.logprobs == pytest.approx([lp[i, t].item() for i, t in enumerate(greedy.token_ids)], abs=1e-5)
    assert greedy.top_logprobs == [None] * 5
    # One row with a (neutral) penalty sends the batch down the general path: same answers.
    seqs = seqs_for(SamplingParams(temperature=0.0), 5)
    seqs[2] = fake_seq([3, 4, 5], SamplingParams(temperature=0.0, repetition_penalty=1.0 + 1e-9), request_id="p")
    general = Sampler(CPU)(logits, seqs)
    assert general.token_ids == greedy.token_ids
    assert general.logprobs == pytest.approx(greedy.logprobs, abs=1e-6)


def test_greedy_results_precomputed_for_padded_rows_are_used_as_the_kernel_s():
    """A step's CUDA graph computes the greedy token of every padded row (StepGraphs.greedy); the
    sampler takes the first rows of those results for an all-greedy batch, and the general path
    (a row that does not sample greedily) ignores them."""
    g = torch.Generator().manual_seed(11)
    padded = torch.randn(8, 40, generator=g) * 4            # 5 real rows + 3 padding rows
    sampler = Sampler(CPU)
    ids, lse = sampler.ops.argmax_logsumexp(padded)
    packed = torch.cat([ids.double(), (padded.gather(1, ids[:, None]).squeeze(1) - lse).double()])
    expected = sampler(padded[:5], seqs_for(SamplingParams(temperature=0.0), 5))
    # (tokens on the device, [tokens | log-probs] in host memory)
    got = sampler.sample(padded[:5], seqs_for(SamplingParams(temperature=0.0), 5), (ids, packed))
    assert got.token_ids.data_ptr() == ids.data_ptr()        # the graph's tokens, not a new kernel's
    result = got.result()
    assert result.token_ids == expected.token_ids and result.logprobs == pytest.approx(expected.logprobs, abs=1e-6)
    wrong = (torch.zeros_like(ids), torch.zeros_like(packed))  # would give token 0 if it were used
    seqs = seqs_for(SamplingParams(temperature=0.0), 5)
    seqs[1] = fake_seq([3, 4, 5], SamplingParams(temperature=0.0, logprobs=2), request_id="k")
    general = sampler.sample(padded[:5], seqs, wrong).result()
    assert general.token_ids == expected.token_ids


def test_top_k_1_equals_greedy_whatever_the_temperature():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(64, 30, generator=g)
    res = Sampler(CPU, 5)(logits, seqs_for(SamplingParams(temperature=2.0, top_k=1), 64))
    assert res.token_ids == logits.argmax(dim=-1).tolist()
    # tiny top_p: only the top token is kept
    res = Sampler(CPU, 5)(logits, seqs_for(SamplingParams(temperature=1.5, top_p=1e-6), 64))
    assert res.token_ids == logits.argmax(dim=-1).tolist()


def test_mixed_batch_greedy_rows_unaffected_by_sampling_rows():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 30, generator=g) * 2
    seqs = [fake_seq([1, 2], SamplingParams(temperature=0.0 if i % 2 else 1.0), request_id=str(i))
            for i in range(8)]
    res = Sampler(CPU, 0)(logits, seqs)
    for i in range(1, 8, 2):
        assert res.token_ids[i] == logits[i].argmax().item()


# ----- distributions ------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, -1, 1.0),
    (0.5, -1, 1.0),
    (2.0, -1, 1.0),
    (1.0, 5, 1.0),
    (1.0, -1, 0.7),
    (0.8, 8, 0.9),
    (1.3, 3, 0.95),
])
def test_sampling_distribution_and_allowed_set(temperature, top_k, top_p):
    vocab, n = 40, 20000
    logits = peaked_logits(vocab, seed=top_k + 7, spread=2.0)
    probs = allowed_probs(logits, temperature, top_k, top_p)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    tokens = draw(logits, params, n, seed=17)
    allowed = set(torch.nonzero(probs > 0).flatten().tolist())
    drawn = set(tokens.tolist())
    assert drawn <= allowed, f"drew tokens outside the allowed set: {sorted(drawn - allowed)}"
    if top_k > 0 or top_p < 1.0:
        assert len(allowed) < vocab
    counts = torch.bincount(tokens, minlength=vocab)
    ok, info = chi_square_ok(counts, probs)
    assert ok, info
    # and a cruder, readable check: every allowed token's frequency is near its probability
    freq = counts.double() / n
    assert (freq - probs).abs().max().item() < 0.02


def test_temperature_sharpens_and_flattens():
    logits = peaked_logits(30, seed=4, spread=1.5)
    top = logits.argmax().item()
    freqs = {}
    for t in (0.25, 1.0, 4.0):
        tokens = draw(logits, SamplingParams(temperature=t), 8000, seed=3)
        freqs[t] = (tokens == top).double().mean().item()
        assert freqs[t] == pytest.approx(allowed_probs(logits, t)[top].item(), abs=0.02)
    assert freqs[0.25] > freqs[1.0] > freqs[4.0]


def test_top_p_boundary_keeps_the_token_that_reaches_the_mass():
    # probabilities 0.5, 0.3, 0.2: top_p=0.8 keeps exactly the first two (0.5 + 0.3 reaches 0.8)
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    tokens = draw(logits, SamplingParams(temperature=1.0, top_p=0.8), 4000, seed=9)
    assert set(tokens.tolist()) == {0, 1}
    tokens = draw(logits, SamplingParams(temperature=1.0, top_p=0.81), 4000, seed=9)
    assert set(tokens.tolist()) == {0, 1, 2}


def test_minus_infinity_logits_are_never_drawn():
    logits = torch.full((20,), float("-inf"))
    logits[[3, 11, 17]] = torch.tensor([0.0, 1.0, -1.0])
    tokens = draw(logits, SamplingParams(temperature=1.0), 5000, seed=1)
    assert set(tokens.tolist()) == {3, 11, 17}


# ----- seeds --------------------------------------------------------------------------------------
def test_seeded_rows_reproduce_and_ignore_batch_composition():
    logits = peaked_logits(50, seed=5, spread=1.0)
    params = SamplingParams(temperature=1.0, seed=1234)

    def run(batch_extra, sampler_seed, steps=20):
        sampler = Sampler(CPU, sampler_seed)
        seq = fake_seq([1, 2, 3], params, request_id="seeded")
        others = [fake_seq([1], SamplingParams(temperature=1.0, seed=None if i % 2 else 99 + i),
                           request_id=f"o{i}") for i in range(batch_extra)]
        got = []
        for _ in range(steps):
            batch = others[:batch_extra // 2] + [seq] + others[batch_extra // 2:]
            res = sampler(logits[None].expand(len(batch), -1).clone(), batch)
            got.append(res.token_ids[batch.index(seq)])
        return got

    a = run(0, 0)
    assert a == run(0, 0) == run(5, 1) == run(2, 7)
    assert len(set(a)) > 3                                  # not a constant: it really samples
    other_seed = SamplingParams(temperature=1.0, seed=4321)
    sampler = Sampler(CPU, 0)
    s2 = fake_seq([1, 2, 3], other_seed, request_id="x")
    b = [sampler(logits[None].clone(), [s2]).token_ids[0] for _ in range(20)]
    assert a != b


@pytest.mark.parametrize("neighbour", [dict(top_p=0.9), dict(top_k=50)])
def test_an_unfiltered_row_keeps_its_whole_distribution_beside_a_filtering_row(neighbour):
    """A row without top-k/top-p draws from the same distribution, bit for bit, whether or not a
    row that filters shares the batch: a Llama-3-sized vocabulary with one confident token and a
    flat tail, whose float32 cumulative mass reaches 1.0 thousands of tokens before its end (the
    top-p mask once cut those tokens from every row of such a batch, and seeded draws changed)."""
    vocab = 128256
    logits = torch.linspace(0, -1e-3, vocab)
    logits[torch.randint(vocab, (1,)).item()] = 5.0 + math.log(vocab)
    logits += torch.rand(vocab) * 1e-4   # fresh tail each run
    plain = fake_seq([1], SamplingParams(temperature=1.0), request_id="plain")
    filtering = fake_seq([1], SamplingParams(temperature=1.0, **neighbour), request_id="filtering")
    sampler = Sampler(CPU)
    alone = sampler._filtered_probs(logits[None].clone(), [plain])[0]
    beside = sampler._filtered_probs(logits[None].expand(2, -1).clone(), [plain, filtering])[0]
    assert int((alone > 0).sum()) == vocab
    assert torch.equal(alone, beside)


def test_unseeded_sampling_follows_the_engine_seed():
    logits = peaked_logits(50, seed=6, spread=1.0)
    p = SamplingParams(temperature=1.0)
    a = draw(logits, p, 64, sampler=Sampler(CPU, 3)).tolist()
    b = draw(logits, p, 64, sampler=Sampler(CPU, 3)).tolist()
    c = draw(logits, p, 64, sampler=Sampler(CPU, 4)).tolist()
    assert a == b and a != c


def test_seeded_generation_through_engine(checkpoint, engine_factory):
    d = checkpoint("gqa")
    eng = engine_factory(d)
    ids = [eng.tokenize(p) for p in PROMPTS]
    seeded = SamplingParams(temperature=1.0, top_p=0.95, seed=77, max_tokens=24, ignore_eos=True)
    [alone] = run_requests(eng, [ids[1]], seeded)
    [again] = run_requests(engine_factory(d), [ids[1]], seeded)
    assert alone == again
    # in a batch with other (seeded and unseeded, greedy and sampled) requests, at another position
    mixed = [SamplingParams(temperature=1.0, max_tokens=30, ignore_eos=True),
             SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True),
             seeded,
             SamplingParams(temperature=0.7, seed=5, max_tokens=24, ignore_eos=True)]
    res = run_requests(engine_factory(d, seed=123), [ids[0], ids[2], ids[1], ids[3]], mixed)
    assert res[2] == alone
    other = SamplingParams(temperature=1.0, top_p=0.95, seed=78, max_tokens=24, ignore_eos=True)
    [diff] = run_requests(engine_factory(d), [ids[1]], other)
    assert diff[1] != alone[1]
    # top_k=1 through the engine equals greedy
    k1 = SamplingParams(temperature=1.0, top_k=1, max_tokens=24, ignore_eos=True)
    g = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    assert run_requests(engine_factory(d), [ids[2]], k1) == run_requests(engine_factory(d), [ids[2]], g)


# ----- penalties ----------------------------------------------------------------------------------
def test_repetition_penalty_applies_to_prompt_and_output_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0, 1.0, 0.0, 4.0]])
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    seq = fake_seq([1, 2, 1, 6, 3], params, num_prompt=3)    # prompt {1, 2}, output {6, 3}
    got = Sampler(CPU)._apply_penalties(logits.clone(), [seq])[0]
    expected = logits[0].clone()
    for t in {1, 2, 6, 3}:
        v = expected[t].item()
        expected[t] = v / 2.0 if v > 0 else v * 2.0
    assert torch.equal(got, expected)
    assert got.tolist() == [2.0, -2.0, 0.25, 1.5, -2.0, 1.0, 0.0, 4.0]


def test_presence_and_frequency_penalties_count_output_tokens_only():
    logits = torch.zeros(1, 8)
    params = SamplingParams(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.25)
    seq = fake_seq([1, 2, 3, 3, 3, 5, 1], params, num_prompt=3)   # outputs: 3 x2, 5 x1, 1 x1
    got = Sampler(CPU)._apply_penalties(logits.clone(), [seq])[0]
    counts = {3: 2, 5: 1, 1: 1}                                    # the prompt's 3 does not count
    expected = [-(0.25 * counts[t] + 0.5) if t in counts else 0.0 for t in range(8)]
    assert got.tolist() == pytest.approx(expected)
    assert got[2].item() == 0.0                               # prompt-only token untouched
    neg = SamplingParams(temperature=0.0, presence_penalty=-1.0)
    got = Sampler(CPU)._apply_penalties(logits.clone(), [fake_seq([1, 4], neg, num_prompt=1)])[0]
    assert got.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]


def test_penalties_change_the_choice_but_not_reported_logprobs_or_other_rows():
    logits = torch.tensor([[1.0, 5.0, 4.5, 0.0], [1.0, 5.0, 4.5, 0.0]])
    pen = SamplingParams(temperature=0.0, repetition_penalty=1.5, logprobs=1)
    plain = SamplingParams(temperature=0.0)
    seqs = [fake_seq([0, 1], pen, num_prompt=2), fake_seq([0, 1], plain, num_prompt=2)]
    res = Sampler(CPU)(logits.clone(), seqs)
    assert res.token_ids == [2, 1]                            # 5/1.5 < 4.5
    assert res.logprobs[0] == pytest.approx(torch.log_softmax(logits[0], -1)[2].item(), abs=1e-6)
    freq = SamplingParams(temperature=0.0, frequency_penalty=0.3)
    seq = fake_seq([0, 1, 1], freq, num_prompt=1)             # output token 1 twice: 5 - 0.6 = 4.4
    assert Sampler(CPU)(logits[:1].clone(), [seq]).token_ids == [2]


def test_penalties_through_the_engine_reduce_repetition(checkpoint, engine_factory):
    d = checkpoint("gqa")
    eng = engine_factory(d)
    prompt = eng.tokenize(PROMPTS[1])
    [(_, plain, _)] = run_requests(eng, [prompt], SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True))
    [(_, pen, _)] = run_requests(eng, [prompt], SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True,
                                                                 frequency_penalty=2.0, presence_penalty=2.0))
    assert pen != plain
    assert len(set(pen)) >= len(set(plain))


# ----- min_tokens and stop tokens -----------------------------------------------------------------
def test_min_tokens_blocks_eos_and_stop_token_ids():
    logits = torch.tensor([[0.0, 9.0, 8.0, 1.0, 7.0]])          # EOS (1) is the argmax
    for n_out, expect in ((0, 2), (2, 2), (3, 1)):
        p = SamplingParams(temperature=0.0, min_tokens=3)
        seq = fake_seq([4] + [3] * n_out, p, num_prompt=1, eos=(1,))
        assert Sampler(CPU)(logits.clone(), [seq]).token_ids == [expect], n_out
    # stop_token_ids are blocked too
    p = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[2])
    seq = fake_seq([4], p, num_prompt=1, eos=(1,))
    assert Sampler(CPU)(logits.clone(), [seq]).token_ids == [4]
    # ignore_eos: EOS is an ordinary token, min_tokens does not block it
    p = SamplingParams(temperature=0.0, min_tokens=3, ignore_eos=True)
    seq = fake_seq([4], p, num_prompt=1, eos=(1,))
    assert Sampler(CPU)(logits.clone(), [seq]).token_ids == [1]
    # sampled rows are blocked as well
    p = SamplingParams(temperature=1.0, min_tokens=3)
    seqs = [fake_seq([4], p, num_prompt=1, eos=(1,), request_id=str(i)) for i in range(500)]
    assert 1 not in Sampler(CPU, 0)(logits.expand(500, -1).clone(), seqs).token_ids


def test_min_tokens_through_the_engine(checkpoint, engine_factory):
    d = checkpoint("gqa")
    eng = engine_factory(d)
    prompt = eng.tokenize(PROMPTS[2])
    [(_, toks, _)] = run_requests(eng, [prompt], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
    stop = toks[2]
    j = toks.index(stop)
    [(_, stopped, reason)] = run_requests(eng, [prompt], SamplingParams(temperature=0.0, max_tokens=12,
                                                                         stop_token_ids=[stop]))
    assert stopped == toks[:j + 1] and reason == "stop"
    eng.add_request("m", prompt, SamplingParams(temperature=0.0, max_tokens=12, stop_token_ids=[stop],
                                                min_tokens=6))
    _, held, reason = joined(drive(eng)["m"])
    assert stop not in held[:6]
    assert len(held) >= 6
    assert reason == ("stop" if held[-1] == stop else "length")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sampling_queues_work_without_waiting_for_the_gpu():
    """sample() only queues device work (the engine launches the next step meanwhile): no
    synchronizing call for any mix of options, min_tokens and penalties included (torch's sync
    debug mode raises on each). A spin kernel ahead keeps the GPU busy throughout."""
    gpu = torch.device("cuda")
    vocab = 1000
    options = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.0, logprobs=3),
               SamplingParams(temperature=0.9, top_k=20, top_p=0.8),
               SamplingParams(temperature=0.7, seed=11),
               SamplingParams(temperature=0.0, min_tokens=5, stop_token_ids=[3, 7, 999]),
               SamplingParams(temperature=0.8, repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.2)]
    seqs = [fake_seq([5, 6, 7, 8, 9, 10], p, request_id=str(i), num_prompt=4, eos=(2,))
            for i, p in enumerate(options)]
    sampler = Sampler(gpu, 0)
    logits = torch.randn(len(seqs), vocab, device=gpu)
    expected = sampler(logits.clone(), seqs)   # warm-up (allocations, kernels) and the reference
    torch.cuda.synchronize()
    torch.cuda._sleep(50_000_000)
    torch.cuda.set_sync_debug_mode("error")
    try:
        pending = sampler.sample(logits.clone(), seqs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    got = pending.result()
    greedy_rows = [0, 1, 4]
    assert [got.token_ids[i] for i in greedy_rows] == [expected.token_ids[i] for i in greedy_rows]
    assert got.token_ids[4] not in (2, 3, 7, 999)
