"""Helpers shared by the engine tests (imported as a plain module: pytest puts this folder on sys.path).

Nothing here knows an expected output: expectations come from transformers, from the tokenizer,
or from the engine itself run in a simpler configuration.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import torch

from engine import EngineConfig, LLMEngine, SamplingParams
from engine.sequence import Sequence

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)

# RoPE scaling of the test checkpoints (see conftest.CHECKPOINTS). original_max_position_embeddings
# is small so that prompts and generations of a few dozen tokens go well past it.
LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=32)
V5_ROPE = dict(rope_type="llama3", rope_theta=2000.0, factor=4.0, low_freq_factor=1.0,
               high_freq_factor=4.0, original_max_position_embeddings=32)

# Prompts of different lengths and scripts. Several are longer than one 16-token KV block (and the
# longest is longer than three), so prefill spans blocks and block tables have several entries.
PROMPTS = [
    "Once upon a time",
    "def add(a, b):\n    return a + b\n\nclass Point:\n    def __init__(self, x, y):\n"
    "        self.x = x\n        self.y = y\n",
    "Il était une fois un petit modèle qui générait du texte. Ça marche très bien, n'est-ce pas ? "
    "Es war einmal ein kleines Modell. Größe, Straße.",
    "昔々、小さなモデルがありました。从前有一个小模型。",
    "import os\nimport sys\n\n\ndef main(argv):\n    for name in sorted(os.listdir(argv[1])):\n"
    "        path = os.path.join(argv[1], name)\n        if os.path.isfile(path):\n"
    "            print(name, os.path.getsize(path))\n    return 0\n\n\nif __name__ == '__main__':\n"
    "    sys.exit(main(sys.argv))\n",
]


def make_engine(model_dir, **kw) -> LLMEngine:
    """A CPU fp32 engine with a small fixed KV cache unless the test says otherwise."""
    kw.setdefault("device", "cpu")
    kw.setdefault("dtype", "float32")
    kw.setdefault("num_kv_blocks", 256)
    kw.setdefault("max_model_len", 512)
    return LLMEngine(EngineConfig(model_dir=str(model_dir), **kw))


def block_invariants(engine: LLMEngine) -> None:
    """The block manager's books agree with the block tables of the live sequences."""
    bm = engine.block_manager
    refs = Counter()
    for seq in engine.seqs.values():
        refs.update(seq.block_table)
        assert len(seq.block_table) == len(set(seq.block_table)), "a sequence holds a block twice"
    referenced = {b for b in range(bm.num_blocks) if bm.ref_counts[b] > 0}
    assert bm.num_free_blocks + len(referenced) == bm.num_blocks
    assert set(bm.free) == {b for b in range(bm.num_blocks) if bm.ref_counts[b] == 0}
    for b in range(bm.num_blocks):
        assert bm.ref_counts[b] == refs.get(b, 0), f"block {b}: ref {bm.ref_counts[b]} != {refs.get(b, 0)}"


def drive(engine: LLMEngine, check: bool = True, on_step=None, max_steps: int = 100_000):
    """Step until idle. Returns {request_id: [RequestOutput, ...]} in delivery order."""
    outs = defaultdict(list)
    for n in range(max_steps):
        if not engine.has_unfinished():
            break
        step_outs = engine.step()
        for o in step_outs:
            outs[o.request_id].append(o)
        if check:
            block_invariants(engine)
        if on_step is not None:
            on_step(n, step_outs)
    else:
        raise AssertionError("engine did not finish")
    return dict(outs)


def joined(outs):
    """(text, token_ids, finish_reason) of one request's outputs; checks the stream is well formed."""
    assert outs, "no output"
    assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True], "finished must come once, last"
    assert all(o.finish_reason is None for o in outs[:-1])
    tokens = [t for o in outs for t in o.token_ids]
    assert outs[-1].num_output_tokens == len(tokens)
    return "".join(o.text for o in outs), tokens, outs[-1].finish_reason


def run_requests(engine: LLMEngine, prompts, params, check: bool = True, prefix: str = "r"):
    """Add all requests at once, run them together; returns [(text, tokens, finish_reason)]."""
    params_list = params if isinstance(params, list) else [params] * len(prompts)
    ids = [f"{prefix}{i}" for i in range(len(prompts))]
    for rid, p, sp in zip(ids, prompts, params_list):
        engine.add_request(rid, p, sp)
    outs = drive(engine, check=check)
    return [joined(outs[rid]) for rid in ids]


def record_logits(engine: LLMEngine):
    """Wrap runner.run: every step appends [(token_ids of each sampling seq, logits row)].
    Turns asynchronous scheduling off: each row's context must be known on the host when it runs."""
    engine.config.async_scheduling = False
    records = []
    orig = engine.runner.run

    def run(batch, *args):
        logits = orig(batch, *args)
        sampling = [list(s.token_ids) for i, s in enumerate(batch.seqs) if batch.samples(i)]
        assert len(sampling) == logits.shape[0]
        records.append(list(zip(sampling, logits.float())))
        return logits

    engine.runner.run = run
    return records


def fake_seq(tokens, params=None, request_id="s", num_prompt=None, eos=()) -> Sequence:
    """A real Sequence without a detokenizer, for block-manager and sampler unit tests."""
    seq = Sequence(request_id, list(tokens) if num_prompt is None else list(tokens[:num_prompt]),
                   params or SamplingParams(), None, tuple(eos), 10**6)
    if num_prompt is not None:
        seq.token_ids.extend(tokens[num_prompt:])
    return seq


def copy_checkpoint(src: Path, dst: Path, link_weights: bool = True) -> Path:
    """A copy of a checkpoint directory whose small files can be edited (weights symlinked)."""
    dst.mkdir(parents=True)
    for f in Path(src).iterdir():
        if f.suffix == ".safetensors" and link_weights:
            (dst / f.name).symlink_to(f.resolve())
        else:
            shutil.copy(f, dst / f.name)
    return dst


def edit_json(path: Path, fn) -> None:
    """Apply fn (which edits the dict in place, or returns a new dict) to a JSON file."""
    obj = json.loads(Path(path).read_text())
    res = fn(obj)
    if isinstance(res, dict):
        obj = res
    Path(path).write_text(json.dumps(obj, indent=2))


# ----- an independent byte-level view of token ids (GPT-2 style byte <-> unicode table) ---------
def _byte_decoder() -> dict[str, int]:
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
                 + list(range(ord("\xae"), ord("\xff") + 1)))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


BYTE_DECODER = _byte_decoder()


def token_bytes(tokenizer, token_id: int, skip_special: bool = True) -> bytes:
    """The raw bytes a byte-level BPE token stands for (b'' for skipped special tokens)."""
    piece = tokenizer.id_to_token(token_id)
    if piece.startswith("<|") and piece.endswith("|>"):
        return b"" if skip_special else piece.encode()
    return bytes(BYTE_DECODER[c] for c in piece)


def complete_utf8_prefix(data: bytes) -> tuple[str, bool]:
    """Decode `data`; if it ends inside a character, decode only up to that character's start.
    Returns (text, ends_on_boundary)."""
    for cut in range(0, 4):
        try:
            return data[:len(data) - cut].decode("utf-8"), cut == 0
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace"), False


def hf_greedy(hf_model, ids: list[int], n: int) -> list[int]:
    """Greedy continuation from transformers' generate(do_sample=False), EOS ignored."""
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                do_sample=False, max_new_tokens=n)
    gen = out[0, len(ids):].tolist()
    assert len(gen) == n, "transformers stopped early (EOS must be disabled)"
    return gen


def hf_last_logits(hf_model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(torch.tensor([ids])).logits[0, -1].float()
