"""Command line: python -m client "Once upon a time" [options]

Prints the text as it arrives on stdout and one summary line on stderr.
Exit status: 0 on success, 1 on a server/client error, 2 on bad usage, 141 when
stdout was closed early (`... | head`: the request is cancelled, nothing printed)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

from .grpc_api import stream_grpc
from .http_api import generate_http, stream_http
from .request import ClientError, GenerateRequest, Result


def build_parser() -> argparse.ArgumentParser:
    grpc_port = os.environ.get("GRPC_PORT", "8001")
    http_port = os.environ.get("HTTP_PORT", "8000")
    p = argparse.ArgumentParser(prog="python -m client", description="Generate text from the Triton-served LLM.")
    p.add_argument("prompt", help='prompt text, or "-" to read it from stdin')
    p.add_argument("--url", default=f"localhost:{grpc_port}", help="gRPC host:port (default from $GRPC_PORT or 8001)")
    p.add_argument("--http", action="store_true", help="use the HTTP generate endpoints instead of gRPC")
    p.add_argument("--http-url", default=f"localhost:{http_port}", help="HTTP host:port (default from $HTTP_PORT or 8000)")
    p.add_argument("--model", default="llm")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int)
    # extend+nargs: both "--stop a b" and "--stop a --stop b" work; put the prompt first.
    p.add_argument("--stop", action="extend", nargs="+", default=[], metavar="S",
                   help="stop string(s); takes every word after it, so put the prompt first "
                        '(python -m client "Once upon" --stop .) or write --stop=. (one string each)')
    p.add_argument("--no-stream", action="store_true", help="one response with the whole text")
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--exclude-input", action="store_true", help="do not prepend the prompt (non-streaming)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="deadline in seconds for the whole request, streaming included, over gRPC "
                        "and HTTP alike (default 600); the request is cancelled when it runs out")
    return p


def request_from_args(args: argparse.Namespace) -> GenerateRequest:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    return GenerateRequest(
        prompt=prompt, max_tokens=args.max_tokens, temperature=args.temperature,
        top_p=args.top_p, top_k=args.top_k, seed=args.seed, stop=args.stop,
        ignore_eos=args.ignore_eos, stream=not args.no_stream,
        exclude_input_in_output=args.exclude_input,
    )


def summary(result: Result) -> str:
    def ms(seconds):
        return "?" if seconds is None else f"{seconds * 1000:.1f}ms"

    tps = result.tokens_per_s
    return (f"[tokens={result.num_output_tokens if result.num_output_tokens is not None else '?'}"
            f" ttft={ms(result.ttft_s)} total={ms(result.total_s)}"
            f" tok/s={'?' if tps is None else f'{tps:.1f}'} finish={result.finish_reason}]")


def run(args: argparse.Namespace) -> Result:
    request = request_from_args(args)
    t_start = time.perf_counter()
    if args.http and not request.stream:
        result = generate_http(args.http_url, args.model, request, timeout=args.timeout)
        sys.stdout.write(result.text)
    else:
        # gRPC always streams at the RPC level; stream=False just means one chunk.
        chunks = (stream_http(args.http_url, args.model, request, timeout=args.timeout) if args.http
                  else stream_grpc(args.url, args.model, request, timeout=args.timeout))
        seen = []
        # closing: whatever ends the loop early (a broken pipe, ^C) stops the stream and cancels
        # the request at once; else tritonclient's stream thread keeps the process alive.
        with contextlib.closing(chunks):
            for chunk in chunks:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
                seen.append(chunk)
        result = Result.from_chunks(seen, t_start)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except ClientError as e:
        sys.stdout.flush()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): the stream is closed and the request cancelled. Point
        # stdout at /dev/null so the interpreter's final flush does not complain again.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    print(summary(result), file=sys.stderr)
    return 0
