"""Turn a step's logits into next tokens, one row per sampling sequence.

Order of operations (as in vLLM/HF): penalties on the raw logits, then greedy argmax, or temperature
-> top-k -> top-p -> sample. Sampling uses the "exponential race" (argmax of p / E with E ~ Exp(1)),
which draws exactly from p; each seeded request draws its noise from its own generator, so its
output does not depend on which other requests share the batch.

Returned log-probabilities are those of the model's raw distribution (log_softmax of the logits
before penalties/temperature), as vLLM reports by default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.sequence import Sequence
from kernels import get_ops


@dataclass
class SampleResult:
    token_ids: list[int]
    logprobs: list[float]                   # of the chosen tokens
    top_logprobs: list[list[tuple[int, float]] | None]  # per row, when the request asked for them


class SampledTokens:
    """A step's sampled tokens on their way to the host.

    Sampling only queues GPU work and one device-to-host copy; `result()` waits for it. In between
    the engine can launch the next step, which reads these tokens on the device (`token_ids`).
    """

    def __init__(self, token_ids: torch.Tensor, host: torch.Tensor, event, top_ks: list[int],
                 stride: int | None = None):
        self.token_ids = token_ids     # [rows] int64 on the device
        self._host = host              # float64: ids, logprobs, then each row's top-k ids and logprobs
        self._event = event            # CUDA event after the copy (None on the CPU: already done)
        self._top_ks = top_ks          # per row, 0 when the request asked for no top logprobs
        self._stride = stride          # where the logprobs start in _host (default: after the ids)

    def result(self) -> SampleResult:
        if self._event is not None:
            self._event.synchronize()  # releases the GIL while it waits
        values = self._host.tolist()   # token ids are exact in float64
        n = len(self._top_ks)
        token_ids = [int(t) for t in values[:n]]
        at = self._stride or n
        logprobs = values[at:at + n]
        top = [None] * n
        k_max = max(self._top_ks, default=0)
        if k_max:
            ids, lps = values[2 * n:2 * n + n * k_max], values[2 * n + n * k_max:]
            for i, k in enumerate(self._top_ks):
                if k:
                    row = slice(i * k_max, i * k_max + k)
                    top[i] = list(zip(map(int, ids[row]), lps[row]))
        return SampleResult(token_ids, logprobs, top)


class Sampler:
    def __init__(self, device: torch.device, seed: int = 0):
        self.device = device
        self.ops = get_ops(device)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> SampleResult:
        return self.sample(logits, seqs).result()

    def sample(self, logits: torch.Tensor, seqs: list[Sequence],
               greedy: tuple[torch.Tensor, torch.Tensor] | None = None) -> SampledTokens:
        """Queue the sampling of one token per row; nothing here waits for the device.
        greedy: the step's CUDA graph's own greedy results for its (padded) rows, the first
        len(seqs) of which are these (ModelRunner.last_greedy: the tokens on the device, and
        [tokens | log-probs] in pinned host memory): used when every row samples greedily."""
        blocked = self._stop_blocked_rows(seqs)
        if not blocked and all(s.plain_greedy for s in seqs):
            # The common case, all greedy: the kernel below writes the tokens and their
            # log-probabilities straight into the buffer copied to the host.
            if greedy is not None:   # already computed inside the step's graph, and on the host
                ids, host = greedy
                event = None
                if self.device.type == "cuda":
                    event = torch.cuda.Event()
                    event.record()   # after the graph, whose kernel wrote `host`
                return SampledTokens(ids[:len(seqs)], host, event, [0] * len(seqs), stride=len(ids))
            packed = torch.empty(2 * len(seqs), dtype=torch.float64, device=logits.device)
            greedy, _ = self.ops.argmax_logsumexp(logits, greedy_out=packed)
            return self._to_host(greedy, packed, [0] * len(seqs))
        top_ks = [s.params.logprobs or 0 for s in seqs]
        # One pass over the vocabulary gives every row's greedy token and its normalizer: raw
        # log-probabilities are logits - logsumexp, so no second [batch, vocab] tensor is made
        # (at batch 256 x 128k vocab that is 128 MB a step), nor an fp32 copy of the logits.
        greedy, lse = self.ops.argmax_logsumexp(logits)
        processed = logits
        if any(s.has_penalties for s in seqs):
            processed = self._apply_penalties(logits.to(torch.float32, copy=True), seqs)
        processed = self._block_stop_tokens(processed, seqs, blocked)
        chosen = greedy if processed is logits else processed.argmax(dim=-1)
        random_rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
        if random_rows:
            rows = self._to_device(random_rows, torch.long)
            probs = self._filtered_probs(processed[rows].float(), [seqs[i] for i in random_rows])
            noise = self._exponential_noise(probs, [seqs[i] for i in random_rows])
            chosen[rows] = (probs / noise).argmax(dim=-1)
        chosen_logprobs = logits.gather(1, chosen[:, None]).squeeze(1).float() - lse
        parts = [chosen.double(), chosen_logprobs.double()]
        k_max = max(top_ks, default=0)
        if k_max > 0:
            vals, ids = logits.topk(k_max, dim=-1)
            parts += [ids.flatten().double(), (vals.float() - lse[:, None]).flatten().double()]
        return self._to_host(chosen, torch.cat(parts), top_ks)

    @staticmethod
    def _to_host(chosen: torch.Tensor, packed: torch.Tensor, top_ks: list[int],
                 stride: int | None = None) -> SampledTokens:
        if packed.device.type != "cuda":
            return SampledTokens(chosen, packed, None, top_ks, stride)
        # One device-to-host copy for everything the host needs, into pinned memory so it is
        # truly asynchronous; the event marks its completion.
        host = torch.empty(packed.numel(), dtype=torch.float64, pin_memory=True)
        host.copy_(packed, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return SampledTokens(chosen, host, event, top_ks, stride)

    def _to_device(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        """A small host list on the device without a synchronizing copy from pageable memory."""
        t = torch.tensor(values, dtype=dtype)
        if self.device.type != "cuda":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def _apply_penalties(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        for i, s in enumerate(seqs):
            p = s.params
            if not p.has_penalties:
                continue
            assert s.num_pending == 0, "penalties need every previous token on the host"
            row = logits[i]
            # Token lists reach the device through pinned memory and counts by scatter_add_ (a
            # copy from pageable memory, or a CUDA bincount, which reads its max back, would wait
            # for the whole step just launched).
            if p.repetition_penalty != 1.0:
                # HF/vLLM semantics: every token seen in prompt or output is made less likely.
                seen = self._to_device(sorted(set(s.token_ids)), torch.long)
                vals = row[seen]
                row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
            if (p.presence_penalty != 0.0 or p.frequency_penalty != 0.0) and s.num_output_tokens:
                # OpenAI semantics: output tokens only, by presence and by count.
                out = self._to_device(s.output_token_ids, torch.long)
                counts = torch.zeros_like(row).scatter_add_(0, out, torch.ones_like(out, dtype=row.dtype))
                row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)
        return logits

    @staticmethod
    def _stop_blocked_rows(seqs: list[Sequence]) -> list[int]:
        """min_tokens: the rows whose stop tokens cannot be drawn yet."""
        # num_tokens counts tokens still in flight: they precede the one drawn now.
        return [i for i, s in enumerate(seqs)
                if s.holds_stop_tokens and s.num_tokens - s.num_prompt_tokens < s.params.min_tokens]

    def _block_stop_tokens(self, logits: torch.Tensor, seqs: list[Sequence], rows: list[int]) -> torch.Tensor:
        """min_tokens: until a request has that many tokens, its stop tokens (in `rows`, from
        _stop_blocked_rows) cannot be drawn. One index_fill_ over the flattened logits for all
        rows, its indices copied from pinned memory: indexing with a Python list, or assigning a
        scalar through advanced indexing (index_put_ copies the scalar from pageable memory), waits
        for the step just launched, every step of every such request."""
        if not rows:
            return logits
        vocab = logits.shape[1]
        flat = [i * vocab + t for i in rows for t in seqs[i].stop_ids if t < vocab]
        logits = logits.clone()   # contiguous, so view(-1) addresses row i at i * vocab
        if flat:
            logits.view(-1).index_fill_(0, self._to_device(flat, torch.long), float("-inf"))
        return logits

    def _filtered_probs(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        temps = self._to_device([s.params.temperature for s in seqs], torch.float32)
        logits = logits / temps[:, None]
        vocab = logits.shape[1]
        # top_k >= vocab is no filter; clamping also keeps a huge value ({"top_k": 1e30}) from
        # overflowing the int64 tensor below and failing the whole step.
        top_ks = [min(s.params.top_k, vocab) if s.params.top_k > 0 else vocab for s in seqs]
        # top_p = 1 is no filter either, but the sort below runs for the whole batch as soon as one
        # row filters: a row that does not ask gets an infinite threshold, since its float32 mass
        # can reach 1.0 before the tail (a 128k vocabulary's flat tail), which would make tokens it
        # may draw alone undrawable beside such a row (and its seeded draws depend on the batch).
        top_ps = [s.params.top_p if s.params.top_p < 1.0 else math.inf for s in seqs]
        if any(k < vocab for k in top_ks) or any(p < 1.0 for p in top_ps):
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            ranks = torch.arange(vocab, device=logits.device)[None, :]
            k = self._to_device(top_ks, torch.long)[:, None]
            sorted_logits = sorted_logits.masked_fill(ranks >= k, float("-inf"))
            sorted_probs = sorted_logits.softmax(dim=-1)
            # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
            mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
            p = self._to_device(top_ps, torch.float32)[:, None]
            sorted_logits = sorted_logits.masked_fill(mass_before >= p, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
        return logits.softmax(dim=-1)

    def _exponential_noise(self, probs: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        noise = torch.empty_like(probs)
        shared = [i for i, s in enumerate(seqs) if s.generator is None]
        if shared:
            noise[self._to_device(shared, torch.long)] = torch.empty((len(shared), probs.shape[1]), device=probs.device).exponential_(
                generator=self.generator)
        for i, s in enumerate(seqs):
            if s.generator is not None:
                # Per-request generators live on the CPU: same stream on any device and batch.
                row = torch.empty(probs.shape[1]).exponential_(generator=s.generator)
                noise[i] = row.pin_memory().to(probs.device, non_blocking=True) if probs.is_cuda else row
        return noise
