"""HTTP client against a stdlib fake of Triton's generate endpoints: checks
the exact request sent, incremental SSE reading and error handling."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from client import ClientError, GenerateRequest, generate_http, stream_http
from client.cli import main


class FakeTriton:
    """Records requests; `reply(handler, body)` decides the answer."""

    def __init__(self):
        self.requests = []
        self.reply = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # needed for chunked streaming

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((self.path, body))
                fake.reply(self, body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()


def send_json(handler, status, obj):
    data = json.dumps(obj).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def start_sse(handler, status=200):
    handler.send_response(status)
    handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()


def send_chunk(handler, data: bytes):
    handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
    handler.wfile.flush()


@pytest.fixture
def fake():
    f = FakeTriton()
    yield f
    f.httpd.shutdown()
    f.httpd.server_close()


def test_generate_http_request_and_result(fake):
    fake.reply = lambda h, body: send_json(h, 200, {
        "model_name": "llm", "model_version": "1", "text_output": "Hi there",
        "finish_reason": "length", "num_output_tokens": 2, "num_input_tokens": 1})
    req = GenerateRequest("Hi", max_tokens=2, temperature=0)  # stream=True is overridden
    r = generate_http(fake.url, "llm", req)
    assert fake.requests == [("/v2/models/llm/generate", {
        "text_input": "Hi", "stream": False, "sampling_parameters": '{"max_tokens": 2, "temperature": 0}',
        "return_finish_reason": True, "return_num_input_tokens": True, "return_num_output_tokens": True})]
    assert (r.text, r.finish_reason, r.num_output_tokens, r.num_input_tokens, r.num_chunks) == \
        ("Hi there", "length", 2, 1, 1)


def test_stream_http_is_incremental(fake):
    gate = threading.Event()
    waited_out = []

    def reply(h, body):
        start_sse(h)
        send_chunk(h, b'data: {"text_output":" a","finish_reason":"None","num_output_tokens":1}\n\n')
        # Only continue once the client has seen the first event.
        waited_out.append(not gate.wait(5))
        # An event split over two HTTP chunks, and an event without outputs.
        send_chunk(h, b'data: {"text_output":" b","finish_reas')
        send_chunk(h, b'on":"length","num_output_tokens":1}\n\ndata: {"model_name":"llm"}\n\n')
        send_chunk(h, b"")

    fake.reply = reply
    it = stream_http(fake.url, "llm", GenerateRequest("Hi", max_tokens=2))
    first = next(it)
    gate.set()
    rest = list(it)
    assert waited_out == [False]
    assert fake.requests[0][0] == "/v2/models/llm/generate_stream"
    assert fake.requests[0][1]["stream"] is True
    assert [(c.text, c.finish_reason, c.num_output_tokens) for c in [first] + rest] == \
        [(" a", None, 1), (" b", "length", 1)]


def test_stream_http_error_before_stream(fake):
    def reply(h, body):
        start_sse(h, 400)
        send_chunk(h, b'data: {"error":"max_tokens must be at least 1, got -1."}\n\n')
        send_chunk(h, b"")

    fake.reply = reply
    with pytest.raises(ClientError) as info:
        list(stream_http(fake.url, "llm", GenerateRequest("Hi", sampling={"max_tokens": -1})))
    assert info.value.code == "INVALID_ARGUMENT"
    assert info.value.http_status == 400
    assert "max_tokens" in info.value.message


def test_stream_http_error_midway(fake):
    def reply(h, body):
        start_sse(h)
        send_chunk(h, b'data: {"text_output":" a"}\n\ndata: {"error":"engine died"}\n\n')
        send_chunk(h, b"")

    fake.reply = reply
    it = stream_http(fake.url, "llm", GenerateRequest("Hi"))
    assert next(it).text == " a"
    with pytest.raises(ClientError, match="engine died"):
        next(it)


def test_generate_http_error_in_200_body(fake):
    fake.reply = lambda h, body: send_json(h, 200, {"error": "generate expects model to produce exactly 1 response"})
    with pytest.raises(ClientError, match="exactly 1 response"):
        generate_http(fake.url, "llm", GenerateRequest("Hi"))


def test_connection_refused():
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ClientError) as info:
        generate_http(f"127.0.0.1:{port}", "llm", GenerateRequest("Hi"))
    assert info.value.code == "UNAVAILABLE"


def test_cli_over_http(fake, capsys):
    def reply(h, body):
        start_sse(h)
        for piece, reason in [(" a", "None"), (" b", "length")]:
            send_chunk(h, b"data: %s\n\n" % json.dumps(
                {"text_output": piece, "finish_reason": reason, "num_output_tokens": 1}).encode())
        send_chunk(h, b"")

    fake.reply = reply
    rc = main(["Hi", "--http", "--http-url", fake.url, "--model", "m", "--max-tokens", "2",
               "--stop", "x", "y", "--seed", "3", "--ignore-eos"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert out == " a b\n"
    assert "tokens=2" in err and "finish=length" in err and "ttft=" in err
    path, body = fake.requests[0]
    assert path == "/v2/models/m/generate_stream"
    assert json.loads(body["sampling_parameters"]) == {"max_tokens": 2, "seed": 3, "stop": ["x", "y"],
                                                       "ignore_eos": True}


def test_cli_error_exit(fake, capsys):
    fake.reply = lambda h, body: send_json(h, 400, {"error": "max_tokens must be at least 1, got -1."})
    rc = main(["Hi", "--http", "--no-stream", "--http-url", fake.url, "--max-tokens", "-1"])
    assert rc == 1
    assert "max_tokens must be at least 1" in capsys.readouterr().err
