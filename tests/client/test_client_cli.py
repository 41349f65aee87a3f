"""Unit tests: CLI argument handling."""

from client import GenerateRequest, Result
from client.cli import build_parser, request_from_args, summary


def test_defaults_from_env(monkeypatch):
    monkeypatch.setenv("GRPC_PORT", "19001")
    monkeypatch.setenv("HTTP_PORT", "19000")
    args = build_parser().parse_args(["Hi"])
    assert (args.url, args.http_url, args.model, args.http) == ("localhost:19001", "localhost:19000", "llm", False)


def test_defaults_without_env(monkeypatch):
    monkeypatch.delenv("GRPC_PORT", raising=False)
    monkeypatch.delenv("HTTP_PORT", raising=False)
    args = build_parser().parse_args(["Hi"])
    assert (args.url, args.http_url) == ("localhost:8001", "localhost:8000")


def test_request_from_args():
    args = build_parser().parse_args([
        "Once upon a time", "--max-tokens", "8", "--temperature", "0", "--top-p", "0.5", "--top-k", "4",
        "--seed", "1", "--stop", "a", "b", "--stop", "c", "--no-stream", "--ignore-eos", "--exclude-input"])
    assert request_from_args(args) == GenerateRequest(
        "Once upon a time", max_tokens=8, temperature=0.0, top_p=0.5, top_k=4, seed=1, stop=["a", "b", "c"],
        ignore_eos=True, stream=False, exclude_input_in_output=True)


def test_prompt_from_stdin(monkeypatch):
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin"))
    assert request_from_args(build_parser().parse_args(["-"])).prompt == "from stdin"


def test_summary_line():
    r = Result("x", 10, "length", None, 3, None, 10, t_start=1.0, t_first=1.05, t_end=1.5)
    assert summary(r) == "[tokens=10 ttft=50.0ms total=500.0ms tok/s=20.0 finish=length]"
    r = Result("", None, None, None, None, None, 0, t_start=1.0, t_first=None, t_end=1.0)
    assert summary(r) == "[tokens=? ttft=? total=0.0ms tok/s=? finish=None]"


def test_stop_help_says_how_to_keep_the_prompt():
    # "--stop . 'Once upon'" makes the prompt a stop string; the help must say how to avoid it.
    text = " ".join(build_parser().format_help().split())
    assert "put the prompt first" in text and "--stop=." in text
    args = build_parser().parse_args(["--stop=.", "Once upon"])
    assert (args.prompt, args.stop) == ("Once upon", ["."])
    args = build_parser().parse_args(["Once upon", "--stop", ".", "!"])
    assert (args.prompt, args.stop) == ("Once upon", [".", "!"])


def test_timeout_help_says_whole_request():
    text = " ".join(build_parser().format_help().split())
    assert "whole request" in text and "HTTP" in text
