"""The synchronous engine: requests in, one step at a time, incremental outputs out.

    engine = LLMEngine(EngineConfig(model_dir="models/tiny"))
    engine.add_request("r1", "Once upon a time", SamplingParams(max_tokens=32, temperature=0))
    while engine.has_unfinished():
        for out in engine.step(): print(out.text, end="")

Data flows one way per step: scheduler (which tokens) -> runner (logits) -> sampler (next tokens)
-> stop checks and detokenizer (text) -> RequestOutput. `EngineLoop` (engine/loop.py) runs this on
its own thread for the server.
"""
from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from engine.block_manager import BlockManager
from engine.config import EngineConfig, ModelConfig, ModelLoadError
from engine.detokenizer import ByteLevelTokens, make_detokenizer
from engine.model_runner import ModelRunner, make_current
from engine.sampler import SampledTokens, Sampler
from engine.sampling_params import InvalidRequest, SamplingParams
from engine.scheduler import ScheduledBatch, Scheduler
from engine.sequence import RequestOutput, Sequence, Status

log = logging.getLogger(__name__)


def load_tokenizer(model_dir: str | Path) -> Tokenizer:
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: the engine needs a Hugging Face tokenizer.json")
    return Tokenizer.from_file(str(path))


@dataclass(frozen=True)
class RequestLimits:
    """What bounds a request, fixed once the engine is up (engine/remote.py checks requests with
    these in the Triton stub's process, without asking the engine's)."""
    max_model_len: int
    kv_capacity_tokens: int
    vocab_size: int


def check_request(prompt_ids: list[int], params: SamplingParams, limits: RequestLimits) -> None:
    """Refuse, up front, a request that could never complete (InvalidRequest naming the field)."""
    n = len(prompt_ids)
    if n == 0:
        raise InvalidRequest("text_input", "prompt is empty")
    if n >= limits.max_model_len:
        raise InvalidRequest("text_input", f"prompt has {n} tokens; max_model_len is "
                                           f"{limits.max_model_len}, leaving no room to generate")
    if n + params.max_tokens > limits.max_model_len:
        raise InvalidRequest("max_tokens", f"prompt ({n} tokens) + max_tokens ({params.max_tokens}) "
                                           f"exceeds max_model_len ({limits.max_model_len})")
    if n + params.max_tokens > limits.kv_capacity_tokens:
        raise InvalidRequest("max_tokens", f"prompt ({n} tokens) + max_tokens ({params.max_tokens}) "
                                           f"exceeds the whole KV cache ({limits.kv_capacity_tokens} tokens)")
    if min(prompt_ids) < 0 or max(prompt_ids) >= limits.vocab_size:
        # A token id outside the embedding table fails the whole step (an index error, a device
        # assert on the GPU), and with it every request in flight.
        raise InvalidRequest("text_input", f"prompt token ids must be in [0, {limits.vocab_size}), got "
                                           f"{min(prompt_ids)}..{max(prompt_ids)}")
    if any(t >= limits.vocab_size for t in params.stop_token_ids):
        raise InvalidRequest("stop_token_ids", f"token ids must be below the vocabulary size {limits.vocab_size}")


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    num_preemptions: int
    prefix_cache_queries: int   # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int      # of which found cached


@dataclass
class _InFlightStep:
    seqs: list[Sequence]          # the sequences that sample, in row order
    sampled: SampledTokens
    needs_host_tokens: bool       # a request with penalties: read before the next step samples


@dataclass
class Completion:
    """The whole result of one request, for offline use (`LLMEngine.generate`)."""
    text: str
    token_ids: list[int]
    finish_reason: str
    num_input_tokens: int
    cumulative_logprob: float


class LLMEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.model_config = ModelConfig.from_dir(config.model_dir)
        self.tokenizer = load_tokenizer(config.model_dir)
        # Byte-level tokenizers (Llama 3) get the fast detokenizer: token bytes, no tokenizer calls.
        self.byte_tokens = ByteLevelTokens(self.tokenizer) if ByteLevelTokens.supports(self.tokenizer) else None
        model_limit = self.model_config.max_position_embeddings
        self.max_model_len = min(config.max_model_len or model_limit, model_limit)
        if config.max_model_len and config.max_model_len > model_limit:
            log.warning("max_model_len %d is above the model's max_position_embeddings; serving %d tokens",
                        config.max_model_len, model_limit)
        self.runner = ModelRunner(config, self.model_config, self.max_model_len)
        self.block_manager = BlockManager(self.runner.num_blocks, config.block_size,
                                          config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs,
                                   max(config.max_num_batched_tokens, config.max_num_seqs),
                                   config.max_waiting_requests, config.max_prefill_attention_pairs)
        self.sampler = Sampler(self.runner.device, config.seed)
        # Compile the sampler's kernels now (both forms), not in the first request's step.
        warm = torch.zeros(1, self.model_config.vocab_size, dtype=self.runner.dtype, device=self.runner.device)
        self.sampler.ops.argmax_logsumexp(warm)
        self.sampler.ops.argmax_logsumexp(warm, greedy_out=torch.empty(2, dtype=torch.float64, device=warm.device))
        self.seqs: dict[str, Sequence] = {}
        self._in_flight: _InFlightStep | None = None   # launched, tokens not read yet (see step)
        # Everything allocated so far (torch, the tokenizer, the model's Python objects) lives as
        # long as the process: move it out of the cyclic GC's reach, so a full collection
        # triggered by per-step garbage does not walk it (a multi-millisecond stall in a step).
        gc.collect()
        gc.freeze()
        if self.runner.device.type == "cuda":
            # The host side of a GPU step is one thread's bookkeeping on small tensors; torch's
            # intra-op thread pool only adds wake-ups (a pooled 32k-element copy stalled steps by
            # 1-5 ms, perf/results/2026-11-23-h100/part4/context_sweep).
            torch.set_num_threads(1)

    # ----- requests ------------------------------------------------------------------------------
    @property
    def kv_capacity_tokens(self) -> int:
        return self.runner.num_blocks * self.config.block_size

    def tokenize(self, prompt: str) -> list[int]:
        # encode_batch, not encode: the same ids, but it lets go of the GIL while it works, and
        # encode holds it (a 4 MB prompt stopped the in-process engine loop's thread, and every
        # stream, for seconds).
        return self.tokenizer.encode_batch([prompt], add_special_tokens=True)[0].ids

    def check_request(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Refuse, up front, a request that could never complete. Thread-safe (reads config only)."""
        check_request(prompt_ids, params, self.limits)

    @property
    def limits(self) -> "RequestLimits":
        return RequestLimits(self.max_model_len, self.kv_capacity_tokens, self.model_config.vocab_size)

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> Sequence:
        if request_id in self.seqs:
            raise InvalidRequest("request_id", f"{request_id!r} is already running")
        ids = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        self.check_request(ids, params)
        detok = make_detokenizer(self.tokenizer, ids, params.skip_special_tokens, self.byte_tokens)
        seq = Sequence(request_id, ids, params, detok, self.model_config.eos_token_ids, self.max_model_len)
        self.scheduler.add(seq)
        self.seqs[request_id] = seq
        return seq

    def abort(self, request_id: str) -> RequestOutput | None:
        seq = self.seqs.pop(request_id, None)
        if seq is None:
            return None
        self.scheduler.finish(seq)
        # The text held back is the output's too, but for what the request never finished: an
        # unfinished character, and a tail that may begin a stop string (sent, it could be the
        # start of one that would have matched). What the detokenizer held back is checked for
        # stop strings first, as it would have been had the request gone on: a stop string it
        # completes ends the request there, finish_reason "stop" (a complete answer).
        seq.output_text += seq.detokenizer.flush(drop_incomplete=True)
        if seq.params.stop:
            if self._check_stop_strings(seq):
                return self._output(seq)
            self._drop_stop_string_start(seq)
        seq.finish_reason = "abort"
        return self._output(seq)

    def has_unfinished(self) -> bool:
        if self.scheduler.has_work():
            return True
        # A launched step whose sequences were all aborted since has nothing left to report.
        return self._in_flight is not None and not all(s.finished for s in self._in_flight.seqs)

    def stats(self) -> "EngineStats":
        """A snapshot for metrics; plain int reads, safe to call from another thread."""
        bm = self.block_manager
        return EngineStats(num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
                           kv_blocks_used=bm.num_used_blocks, kv_blocks_total=bm.num_blocks,
                           num_preemptions=self.scheduler.num_preemptions,
                           prefix_cache_queries=bm.prefix_queries, prefix_cache_hits=bm.prefix_hits)

    # ----- one step ------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one step; returns the outputs that became known.

        With asynchronous scheduling (the default) a step's sampled tokens are read one call
        later: this call schedules and launches step N, whose sequences read their last token
        (sampled by step N-1) on the device, and only then waits for step N-1's tokens and turns
        them into outputs, while the GPU already runs step N. The host's work per step (schedule,
        pack, detokenize, stop checks) so hides behind the GPU's instead of adding to it.

        A sequence that finishes on a token read late (EOS, a stop string) has already been
        scheduled once more; that extra token is discarded, never reported. Penalties need every
        previous token on the host, so a step with a penalized request reads the last one first.
        """
        make_current(self.runner.device)   # steps may run on any thread (EngineLoop's, the caller's)
        outputs: list[RequestOutput] = []
        if self._in_flight is not None and (not self.config.overlaps_steps or self._in_flight.needs_host_tokens):
            outputs += self._read_tokens(self._in_flight)
            self._in_flight = None
        batch = self.scheduler.schedule()
        launched = self._launch(batch) if batch.seqs else None
        if self._in_flight is not None:
            outputs += self._read_tokens(self._in_flight)
        self._in_flight = launched
        for seq in batch.seqs:   # now that the tokens they computed are known on the host
            if seq.status is not Status.FINISHED:
                self.block_manager.commit(seq)
        if launched is not None and not self.config.overlaps_steps:
            outputs += self._read_tokens(launched)
            self._in_flight = None
        return outputs

    def _launch(self, batch: ScheduledBatch) -> "_InFlightStep | None":
        """Queue the step's forward pass and sampling on the device; nothing waits here."""
        prev = self._in_flight.sampled.token_ids if self._in_flight is not None else None
        logits = self.runner.run(batch, prev)
        sampling = [seq for seq, samples in zip(batch.seqs, batch.sampling_flags()) if samples]
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += n
        if not sampling:
            return None
        sampled = self.sampler.sample(logits, sampling, self.runner.last_greedy)
        for row, seq in enumerate(sampling):
            seq.num_pending += 1
            seq.pending_row = row
        return _InFlightStep(sampling, sampled, any(s.has_penalties for s in sampling))

    def _read_tokens(self, step: "_InFlightStep") -> list[RequestOutput]:
        """Wait for a launched step's tokens and append them: stop checks, text, outputs."""
        result = step.sampled.result()
        outputs = []
        finished = Status.FINISHED
        for j, seq in enumerate(step.seqs):
            seq.num_pending -= 1
            if seq.status is finished:   # finished (stop token/string) or aborted since: discard the token
                continue
            self._append_token(seq, result.token_ids[j], result.logprobs[j], result.top_logprobs[j])
            if seq.status is finished:
                self.scheduler.finish(seq)
                del self.seqs[seq.request_id]
            outputs.append(self._output(seq))
        return outputs

    def _append_token(self, seq: Sequence, token: int, logprob: float, top) -> None:
        seq.token_ids.append(token)
        seq.cumulative_logprob += logprob
        if seq.params.logprobs is not None:
            entry = {token: logprob, **({} if top is None else dict(top))}
            seq.pending_logprobs.append(
                {str(t): {"logprob": lp, "decoded_token": self.tokenizer.decode([t], skip_special_tokens=False)}
                 for t, lp in entry.items()})
        detok = seq.detokenizer
        if token in seq.stop_ids:
            seq.status = Status.FINISHED
            seq.finish_reason = "stop"
            if seq.params.include_stop_str_in_output:   # as vLLM: the stop token's text too
                seq.output_text += detok.add(token) + detok.flush()
            else:
                # As vLLM: the text up to and including the stop token, less the stop token's
                # own characters, which include one it completes (or carries on): that
                # character's first bytes, held back, are dropped rather than shown as U+FFFD.
                # Other held-back text (a byte-fallback run) is the output's.
                seq.output_text += detok.flush(drop_incomplete=detok.continues(token))
            if seq.params.stop:
                # As vLLM, which checks stop strings in the new text of every token, a stop
                # token's included: a stop string it completes cuts the text there.
                self._check_stop_strings(seq)
            return
        seq.output_text += detok.add(token)
        if seq.params.stop and self._check_stop_strings(seq):
            return
        if len(seq.token_ids) >= seq.max_total_tokens:   # not num_tokens: that counts tokens in flight
            seq.status = Status.FINISHED
            seq.finish_reason = "length"
            seq.output_text += seq.detokenizer.flush()
            self._hit_stop_string(seq)  # the flushed tail may complete a stop string

    def _check_stop_strings(self, seq: Sequence) -> bool:
        """Finish at a stop string in the text's new part, if min_tokens allows."""
        if len(seq.token_ids) - seq.num_prompt_tokens < seq.params.min_tokens:
            # As vLLM: no stop string ends generation before min_tokens (stop tokens are not
            # sampled before then, see Sampler); one completed by a later token may start before
            # this point.
            seq.stop_string_floor = len(seq.output_text)
            return False
        return self._hit_stop_string(seq)

    @staticmethod
    def _hit_stop_string(seq: Sequence) -> bool:
        """Finish at the first stop string and cut the text there. Only the part of the text that
        can hold a new match is searched: a match must end past the last emitted character (and
        past the text made before min_tokens was reached)."""
        text = seq.output_text
        searched_to = max(seq.num_emitted_chars, seq.stop_string_floor)
        best = None
        for stop in seq.params.stop:
            idx = text.find(stop, max(0, searched_to - len(stop) + 1))
            if idx != -1 and (best is None or idx < best[0]):
                best = (idx, stop)
        if best is None:
            return False
        idx, stop = best
        seq.output_text = text[:idx + (len(stop) if seq.params.include_stop_str_in_output else 0)]
        seq.status = Status.FINISHED
        seq.finish_reason = "stop"
        return True

    @staticmethod
    def _drop_stop_string_start(seq: Sequence) -> None:
        """Cut the text where its longest tail that is the start of a stop string begins (text
        not yet sent only). A stop string that a later token would have completed begins there
        or later: the text before is the output's whatever would have followed."""
        text, stops = seq.output_text, seq.params.stop
        for i in range(max(seq.num_emitted_chars, len(text) - max(len(s) for s in stops) + 1), len(text)):
            tail = text[i:]
            if any(len(s) > len(tail) and s.startswith(tail) for s in stops):
                seq.output_text = text[:i]
                return

    def _output(self, seq: Sequence) -> RequestOutput:
        finished = seq.status is Status.FINISHED or seq.finish_reason == "abort"
        upto = len(seq.output_text)
        if not finished and seq.params.stop:
            # Hold back a tail that could be the start of a stop string: it may yet be cut.
            upto -= max(len(s) for s in seq.params.stop) - 1
        upto = max(upto, seq.num_emitted_chars)
        text = seq.output_text[seq.num_emitted_chars:upto]
        seq.num_emitted_chars = upto
        num_output = len(seq.token_ids) - seq.num_prompt_tokens
        new_tokens = seq.token_ids[seq.num_prompt_tokens + seq.num_emitted_tokens:]
        seq.num_emitted_tokens = num_output
        logprobs = None
        if seq.params.logprobs is not None:
            logprobs, seq.pending_logprobs = seq.pending_logprobs, []
        return RequestOutput(seq.request_id, text, new_tokens, finished, seq.finish_reason if finished else None,
                             seq.num_prompt_tokens, num_output, seq.cumulative_logprob, logprobs)

    # ----- offline convenience -------------------------------------------------------------------
    def generate(self, prompts: list[str | list[int]], params: SamplingParams | list[SamplingParams]
                 ) -> list[Completion]:
        """Run prompts to completion together (continuous batching) and return their results."""
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        ids = [f"offline-{id(self)}-{i}" for i in range(len(prompts))]
        acc = {rid: ([], [], None, 0, 0.0) for rid in ids}
        try:
            for rid, prompt, p in zip(ids, prompts, params_list):
                self.add_request(rid, prompt, p)
            while self.has_unfinished():
                for out in self.step():
                    text, toks, _, _, _ = acc[out.request_id]
                    text.append(out.text)
                    toks.extend(out.token_ids)
                    acc[out.request_id] = (text, toks, out.finish_reason, out.num_input_tokens,
                                           out.cumulative_logprob)
        except BaseException:
            # A refused prompt (or an interrupt) must not leave the others queued for nobody, holding
            # KV blocks and their ids (the next call's ids are the same).
            for rid in ids:
                if rid in self.seqs:
                    self.abort(rid)
            raise
        return [Completion("".join(t), k, r, n, lp) for t, k, r, n, lp in (acc[rid] for rid in ids)]
