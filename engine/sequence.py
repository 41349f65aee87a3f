"""One request's state as it moves through the engine: tokens, cache blocks, progress, output."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass

import torch

from engine.detokenizer import ByteLevelDetokenizer, IncrementalDetokenizer
from engine.sampling_params import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True)
class RequestOutput:
    """What the engine reports about a request after a step. Texts and tokens are deltas since the
    previous output for that request; totals are cumulative."""
    request_id: str
    text: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None = None      # "stop", "length", "abort" or "error"
    num_input_tokens: int = 0
    num_output_tokens: int = 0            # total so far
    cumulative_logprob: float = 0.0
    logprobs: list[dict] | None = None    # one entry per token in token_ids, if requested
    error: str | None = None
    # With an error: ERROR_INVALID_REQUEST or ERROR_UNAVAILABLE when the request was refused after
    # it was queued (engine/remote.py checks requests ahead of the engine), None for a failure.
    error_kind: str | None = None

    def __reduce__(self):
        # Pickled as constructor arguments (~2x cheaper both ways than the default state dict).
        return (RequestOutput, (self.request_id, self.text, self.token_ids, self.finished, self.finish_reason,
                                self.num_input_tokens, self.num_output_tokens, self.cumulative_logprob,
                                self.logprobs, self.error, self.error_kind))


ERROR_INVALID_REQUEST = "invalid_request"   # the client's fault: fix the request
ERROR_UNAVAILABLE = "unavailable"           # the server's state (queue full, shutting down): retry later


class Sequence:
    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 detokenizer: IncrementalDetokenizer | ByteLevelDetokenizer, eos_token_ids: tuple[int, ...], max_model_len: int):
        self.request_id = request_id
        self.params = params
        self.token_ids: list[int] = list(prompt_token_ids)   # known on the host
        # Tokens sampled on the GPU whose values the host has not read yet (asynchronous
        # scheduling, engine.py): they count for positions and KV slots, and the next step reads
        # them on the device (row `pending_row` of the previous step's sampled tokens).
        self.num_pending = 0
        self.pending_row = -1
        self.num_prompt_tokens = len(prompt_token_ids)
        self.status = Status.WAITING
        self.block_table: list[int] = []     # only ever replaced or appended to (block_manager.py)
        self.block_table_array = None         # the runner's numpy copy of it (model_runner.prepare)
        self.num_computed_tokens = 0          # tokens whose K/V are in the cache
        self.num_cached_prompt_tokens = 0     # prefix-cache hits at (latest) admission
        self.detokenizer = detokenizer
        self.output_text = ""
        self.num_emitted_chars = 0            # how much of output_text has been sent
        self.stop_string_floor = 0            # a stop string must end past this character (min_tokens)
        self.num_emitted_tokens = 0
        self.cumulative_logprob = 0.0
        self.pending_logprobs: list[dict] = []
        self.finish_reason: str | None = None
        self.arrival_time = time.monotonic()
        # The tokens that end generation, unless ignore_eos: EOS plus the request's own.
        self.stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_token_ids))
        self.max_total_tokens = min(max_model_len, self.num_prompt_tokens + params.max_tokens)
        # Asked of every sequence every step (the sampler's fast path): computed once.
        self.has_penalties = params.has_penalties
        self.plain_greedy = params.greedy and not self.has_penalties and params.logprobs is None
        self.holds_stop_tokens = bool(params.min_tokens and self.stop_ids)   # min_tokens may block them
        self.generator: torch.Generator | None = None  # per-request RNG when a seed is given
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)
        self.preemptions = 0

    @property
    def num_tokens(self) -> int:
        """Tokens the sequence has, including those still in flight from the GPU."""
        return len(self.token_ids) + self.num_pending

    @property
    def num_output_tokens(self) -> int:
        """Generated tokens known on the host (what outputs report)."""
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED
