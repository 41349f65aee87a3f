"""HTTP client against a stdlib fake of Triton's generate endpoints: checks
the exact request sent, incremental SSE reading and error handling."""

import json
import socket
import threading
import time
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


def send_sse(handler, events: list[dict], status=200):
    start_sse(handler, status)
    for event in events:
        send_chunk(handler, b"data: %s\n\n" % json.dumps(event).encode())
    send_chunk(handler, b"")


def test_generate_http_request_and_result(fake):
    # Non-streaming goes through generate_stream with "stream": false: one event.
    fake.reply = lambda h, body: send_sse(h, [{
        "model_name": "llm", "model_version": "1", "text_output": "Hi there",
        "finish_reason": "length", "num_output_tokens": 2, "num_input_tokens": 1}])
    req = GenerateRequest("Hi", max_tokens=2, temperature=0)  # stream=True is overridden
    r = generate_http(fake.url, "llm", req)
    assert fake.requests == [("/v2/models/llm/generate_stream", {
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
    fake.reply = lambda h, body: send_sse(h, [{"error": "generate expects model to produce exactly 1 response"}])
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


# ---- broken peers: every failure is a ClientError, never a raw exception or a silent success

EVENT_A = b'data: {"text_output":" a","finish_reason":"None","num_output_tokens":1}\n\n'


def test_truncated_chunked_body_is_an_error(fake):
    def reply(h, body):
        start_sse(h)
        send_chunk(h, EVENT_A)
        h.wfile.write(b"40\r\npartial")  # a chunk announced as 64 bytes, then the connection drops
        h.wfile.flush()
        h.close_connection = True
        h.connection.shutdown(socket.SHUT_RDWR)

    fake.reply = reply
    it = stream_http(fake.url, "llm", GenerateRequest("Hi"))
    assert next(it).text == " a"
    with pytest.raises(ClientError) as info:
        next(it)
    assert info.value.code == "UNAVAILABLE" and "IncompleteRead" in info.value.message
    with pytest.raises(ClientError) as info:
        generate_http(fake.url, "llm", GenerateRequest("Hi"))
    assert info.value.code == "UNAVAILABLE"


def test_truncated_content_length_body_is_an_error(fake):
    def reply(h, body):
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.write(EVENT_A)
        h.wfile.flush()
        h.close_connection = True
        h.connection.shutdown(socket.SHUT_RDWR)

    fake.reply = reply
    with pytest.raises(ClientError) as info:
        generate_http(fake.url, "llm", GenerateRequest("Hi"))
    assert info.value.code == "UNAVAILABLE"


def test_stream_that_ends_without_final_response_is_an_error(fake):
    # A clean end of the body, but no event carried finish_reason: the reply is incomplete.
    fake.reply = lambda h, body: send_sse(h, [{"text_output": " a", "finish_reason": "None", "num_output_tokens": 1}])
    with pytest.raises(ClientError) as info:
        list(stream_http(fake.url, "llm", GenerateRequest("Hi")))
    assert info.value.code == "UNAVAILABLE" and "final response" in info.value.message
    with pytest.raises(ClientError, match="final response"):
        generate_http(fake.url, "llm", GenerateRequest("Hi"))
    # Without finish_reason asked for, the end of the body is the end.
    chunks = list(stream_http(fake.url, "llm", GenerateRequest("Hi", return_finish_reason=False)))
    assert [c.text for c in chunks] == [" a"]


@pytest.fixture
def raw_server():
    """A TCP peer that reads the request and answers with whatever bytes `reply` holds, then closes."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    state = {"reply": b""}

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
                while len(rest) < length:
                    rest += conn.recv(65536)
                conn.sendall(state["reply"])

    threading.Thread(target=serve, daemon=True).start()
    state["url"] = f"127.0.0.1:{srv.getsockname()[1]}"
    yield state
    srv.close()


@pytest.mark.parametrize("reply", [b"garbage\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n", b""])
def test_bad_status_line_is_an_error(raw_server, reply):
    raw_server["reply"] = reply
    for call in (lambda: generate_http(raw_server["url"], "llm", GenerateRequest("Hi"), timeout=10),
                 lambda: list(stream_http(raw_server["url"], "llm", GenerateRequest("Hi"), timeout=10))):
        with pytest.raises(ClientError) as info:
            call()
        assert info.value.code == "UNAVAILABLE"


def test_timeout_bounds_the_whole_http_stream(fake):
    # An event every 0.1 s forever: no single read ever waits 1 s, the whole stream must still end.
    def reply(h, body):
        start_sse(h)
        try:
            for _ in range(200):
                send_chunk(h, EVENT_A)
                time.sleep(0.1)
        except OSError:
            pass  # the client hung up

    fake.reply = reply
    t = time.monotonic()
    seen = []
    with pytest.raises(ClientError) as info:
        for chunk in stream_http(fake.url, "llm", GenerateRequest("Hi"), timeout=1.0):
            seen.append(chunk)
    assert info.value.code == "DEADLINE_EXCEEDED"
    assert 0.9 < time.monotonic() - t < 3.0 and len(seen) >= 5


def test_timeout_while_waiting_for_headers(fake):
    fake.reply = lambda h, body: time.sleep(3)
    t = time.monotonic()
    with pytest.raises(ClientError) as info:
        generate_http(fake.url, "llm", GenerateRequest("Hi"), timeout=0.5)
    assert info.value.code == "DEADLINE_EXCEEDED" and time.monotonic() - t < 2.0


# ---- codes by the server's message: Triton answers 400 for every model error

@pytest.mark.parametrize("message,code", [
    ("the waiting queue is full (4096 requests); retry later", "UNAVAILABLE"),
    ("the engine has stopped: engine step failed: RuntimeError: boom", "UNAVAILABLE"),
    ("request aborted: the model is being unloaded (server shutting down)", "UNAVAILABLE"),
    ("request cancelled by the client", "CANCELLED"),
    ("internal error: KeyError: 'x'", "INTERNAL"),
    ("max_tokens: must be at least 1, got -1", "INVALID_ARGUMENT"),
])
def test_http_error_codes_follow_the_message(fake, message, code):
    fake.reply = lambda h, body: send_sse(h, [{"error": message}], status=400)
    with pytest.raises(ClientError) as info:
        generate_http(fake.url, "llm", GenerateRequest("Hi"))
    assert (info.value.code, info.value.message, info.value.http_status) == (code, message, 400)
    # The same message midway through a 200 stream.
    fake.reply = lambda h, body: send_sse(h, [{"text_output": " a"}, {"error": message}])
    with pytest.raises(ClientError) as info:
        list(stream_http(fake.url, "llm", GenerateRequest("Hi")))
    assert info.value.code == (code if code != "INVALID_ARGUMENT" else "UNKNOWN")
