"""perf_analyzer --input-data files for the model's vLLM-style interface.

    python -m perf.pa_inputs --input-len 128 --output-len 512 --tokenizer models/default
    # -> perf/perf_analyzer/inputs_128_512.json

Every entry sends `text_input` (a prompt of exactly --input-len tokens when a tokenizer is given,
words otherwise; see perf/loadgen.py PromptBuilder), `stream: true`, and `sampling_parameters` as a
JSON *string* with max_tokens = min_tokens = --output-len and ignore_eos = true (fixed output
length), plus return_num_output_tokens/return_num_input_tokens so perf_analyzer's profile export
carries token counts, and return_cumulative_logprob (see the comment in make_inputs: without it
perf_analyzer 2.51 intermittently fails to write its export). Distinct prompts per entry (perf_analyzer cycles through them), so the prefix
cache only shares the BOS.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_DIR = REPO / "perf" / "perf_analyzer"


def sampling_parameters(output_len: int, ignore_eos: bool = True, temperature: float | None = 0.0) -> str:
    params: dict = {"max_tokens": output_len}
    if ignore_eos:
        params.update(min_tokens=output_len, ignore_eos=True)
    if temperature is not None:
        params["temperature"] = temperature
    return json.dumps(params)


def make_inputs(input_len: int, output_len: int, num_prompts: int = 64, tokenizer=None, seed: int = 0,
                ignore_eos: bool = True, temperature: float | None = 0.0, builder=None) -> dict:
    """The --input-data document: {"data": [{input name: [value]}, ...]}."""
    from perf.loadgen import PromptBuilder
    builder = builder or PromptBuilder(tokenizer)
    rng = random.Random(seed)
    sp = sampling_parameters(output_len, ignore_eos, temperature)
    data = []
    for _ in range(num_prompts):
        data.append({
            "text_input": [builder.build(input_len, rng)],
            "stream": [True],
            "sampling_parameters": [sp],
            "return_num_output_tokens": [True],
            "return_num_input_tokens": [True],
            # perf_analyzer 2.51 records every output of the model config in its profile export and,
            # for an FP32 output a response lacks, writes uninitialized memory; when those bytes are
            # a NaN/Inf the JSON writer fails: exit 1 and an empty export (seen ~1 run in 10). Asking
            # for cumulative_logprob makes every response carry a real value.
            "return_cumulative_logprob": [True],
        })
    return {"data": data}


def input_path(out_dir: str | Path, input_len: int, output_len: int) -> Path:
    return Path(out_dir) / f"inputs_{input_len}_{output_len}.json"


def write_inputs(input_len: int, output_len: int, out_dir: str | Path = DEFAULT_DIR, **kwargs) -> Path:
    path = input_path(out_dir, input_len, output_len)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(make_inputs(input_len, output_len, **kwargs), indent=1, ensure_ascii=False))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.pa_inputs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--input-len", type=int, action="append", help="repeatable; pairs with --output-len")
    ap.add_argument("--output-len", type=int, action="append")
    ap.add_argument("--tokenizer", "--model-dir", dest="tokenizer", default=None,
                    help="model dir or tokenizer.json for exact prompt token counts")
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ignore-eos", action="store_true")
    ap.add_argument("--out-dir", default=str(DEFAULT_DIR))
    args = ap.parse_args(argv)
    ins, outs = args.input_len or [128], args.output_len or [512]
    if len(ins) != len(outs):
        ap.error("give as many --input-len as --output-len")
    from perf.loadgen import PromptBuilder
    builder = PromptBuilder(args.tokenizer)
    for i, o in zip(ins, outs):
        path = write_inputs(i, o, args.out_dir, num_prompts=args.num_prompts, seed=args.seed,
                            ignore_eos=not args.no_ignore_eos, builder=builder)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
