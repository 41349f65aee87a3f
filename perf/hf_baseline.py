"""Hugging Face transformers `generate` throughput: the baseline the engine should beat.

    python perf/hf_baseline.py --model-dir DIR --batches 1,32 --input-len 128 --output-len 64 --out hf.json

LlamaForCausalLM in bf16 on CUDA (fp32 on CPU), greedy, every sequence exactly --output-len new
tokens (min_new_tokens = max_new_tokens), prompts of exactly --input-len tokens padded on the left
(they are all the same length, so padding is a no-op unless --input-spread is given). One short
warm-up generate per batch size, then one timed generate:
output_tokps = batch * output_len / wall time (prefill included).
Writes {"kind": "hf_baseline", ..., "points": [...], "metrics": {"hf_bs32_output_tokps", ...,
"hf_input_len", "hf_output_len"}}. A batch size is skipped once --budget seconds have passed.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from perf.loadgen import PromptBuilder, git_commit  # noqa: E402
from perf.meta import add_threads_arg, apply_threads  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def load(model_dir: str, device: str, dtype: torch.dtype):
    from transformers import AutoTokenizer, LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def batch_inputs(tok, builder: PromptBuilder, batch: int, input_len: int, spread: int, rng: random.Random,
                 device: str):
    prompts = [builder.build(max(2, input_len + (rng.randint(-spread, spread) if spread else 0)), rng)
               for _ in range(batch)]
    enc = tok(prompts, return_tensors="pt", padding=True)
    return {k: v.to(device) for k, v in enc.items()}


@torch.inference_mode()
def generate_tokps(model, tok, inputs, new_tokens: int, device: str) -> tuple[float, float, int]:
    _sync(device)
    t = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    _sync(device)
    dt = time.perf_counter() - t
    produced = (out.shape[1] - inputs["input_ids"].shape[1]) * out.shape[0]
    return produced / dt, dt, produced


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--input-spread", type=int, default=0, help="+- uniform prompt-length spread (padding)")
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--budget", type=float, default=240.0)
    ap.add_argument("--out", required=True)
    add_threads_arg(ap)
    args = ap.parse_args(argv)
    apply_threads(args)
    t_begin = time.perf_counter()
    dtype = (torch.bfloat16 if args.device.startswith("cuda") else torch.float32) if args.dtype == "auto" \
        else getattr(torch, args.dtype)
    model, tok = load(args.model_dir, args.device, dtype)
    builder = PromptBuilder(args.model_dir)
    rng = random.Random(0)
    import transformers
    metrics: dict = {"hf_input_len": args.input_len, "hf_output_len": args.output_len,
                     "hf_load_s": time.perf_counter() - t_begin}
    points, skipped = [], []
    for b in [int(x) for x in args.batches.split(",")]:
        if time.perf_counter() - t_begin > args.budget:
            skipped.append(b)
            continue
        inputs = batch_inputs(tok, builder, b, args.input_len, args.input_spread, rng, args.device)
        generate_tokps(model, tok, inputs, min(4, args.output_len), args.device)  # warm-up
        tokps, dt, produced = generate_tokps(model, tok, inputs, args.output_len, args.device)
        points.append({"batch": b, "input_len": int(inputs["input_ids"].shape[1]), "output_len": args.output_len,
                       "output_tokens": produced, "duration_s": dt, "output_tokps": tokps})
        metrics[f"hf_bs{b}_output_tokps"] = tokps
        print(f"hf generate bs{b:4d}: {tokps:10.1f} tok/s ({produced} tokens in {dt:.2f}s)", flush=True)
    report = {"kind": "hf_baseline", "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "command": " ".join(["python"] + sys.argv), "git_commit": git_commit(),
              "date": time.strftime("%Y-%m-%d"), "transformers": transformers.__version__, "dtype": str(dtype),
              "points": points, "skipped_batches": skipped, "metrics": metrics}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
