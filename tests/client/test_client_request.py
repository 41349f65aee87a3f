"""Unit tests: what a GenerateRequest turns into on the wire, and how
responses are turned back into chunks/results. No server needed."""

import json

import numpy as np
import pytest
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from client import GenerateRequest, Result, build_grpc_inputs
from client.grpc_api import _parse_result
from client.request import Chunk, chunk_from_outputs


def test_minimal_request_inputs():
    req = GenerateRequest("Hello")
    assert req.input_values() == [
        ("text_input", "BYTES", "Hello"),
        ("stream", "BOOL", True),
        ("return_finish_reason", "BOOL", True),
        ("return_num_input_tokens", "BOOL", True),
        ("return_num_output_tokens", "BOOL", True),
    ]
    assert req.sampling_parameters() == {}


def test_full_request_inputs_and_sampling_json():
    req = GenerateRequest(
        "Hi", max_tokens=8, temperature=0.0, top_p=0.9, top_k=5, seed=7, stop=["\n", "END"],
        ignore_eos=True, stream=False, exclude_input_in_output=True,
        return_finish_reason=False, return_num_input_tokens=False,
        return_cumulative_logprob=True, return_logprobs=True,
        sampling={"min_tokens": 2, "top_k": 10},
    )
    values = req.input_values()
    assert [(n, d) for n, d, _ in values] == [
        ("text_input", "BYTES"), ("stream", "BOOL"), ("sampling_parameters", "BYTES"),
        ("exclude_input_in_output", "BOOL"), ("return_cumulative_logprob", "BOOL"),
        ("return_logprobs", "BOOL"), ("return_num_output_tokens", "BOOL"),
    ]
    assert values[1][2] is False
    # Extra sampling params override named fields; None fields are omitted.
    assert json.loads(values[2][2]) == {
        "max_tokens": 8, "temperature": 0.0, "top_p": 0.9, "top_k": 10, "seed": 7,
        "stop": ["\n", "END"], "ignore_eos": True, "min_tokens": 2,
    }


def test_grpc_tensors_exact():
    req = GenerateRequest("héllo", max_tokens=4, temperature=0)
    inputs = build_grpc_inputs(req)
    assert [(i.name(), i.datatype(), list(i.shape())) for i in inputs] == [
        ("text_input", "BYTES", [1]), ("stream", "BOOL", [1]),
        ("sampling_parameters", "BYTES", [1]), ("return_finish_reason", "BOOL", [1]),
        ("return_num_input_tokens", "BOOL", [1]), ("return_num_output_tokens", "BOOL", [1]),
    ]
    raw = {i.name(): i._get_content() for i in inputs}
    assert deserialize_bytes_tensor(raw["text_input"]).tolist() == ["héllo".encode()]
    assert deserialize_bytes_tensor(raw["sampling_parameters"]).tolist() == [b'{"max_tokens": 4, "temperature": 0}']
    assert np.frombuffer(raw["stream"], dtype=np.bool_).tolist() == [True]
    assert np.frombuffer(raw["return_num_output_tokens"], dtype=np.bool_).tolist() == [True]


def test_http_body_exact():
    req = GenerateRequest("Hi", max_tokens=3, stop=["x"], stream=False, exclude_input_in_output=True,
                          return_num_input_tokens=False)
    # sampling_parameters must stay a JSON string: Triton maps fields to tensors by name.
    assert req.http_body() == {
        "text_input": "Hi", "stream": False,
        "sampling_parameters": '{"max_tokens": 3, "stop": ["x"]}',
        "exclude_input_in_output": True, "return_finish_reason": True,
        "return_num_output_tokens": True,
    }


def test_chunk_from_outputs_conversions():
    c = chunk_from_outputs({"text_output": [b"ab"], "finish_reason": [b"None"], "num_output_tokens": [2],
                            "num_input_tokens": [5], "cumulative_logprob": [-1.5],
                            "logprobs": [b'[{"7": {"logprob": -1.5}}]']}, arrival=1.0)
    assert c == Chunk(text="ab", time=1.0, num_output_tokens=2, finish_reason=None, cumulative_logprob=-1.5,
                      num_input_tokens=5, logprobs=[{"7": {"logprob": -1.5}}])
    # HTTP JSON gives bare scalars.
    c = chunk_from_outputs({"text_output": "x", "finish_reason": "length", "model_name": "llm"}, 2.0, final=True)
    assert (c.text, c.finish_reason, c.num_output_tokens, c.final) == ("x", "length", None, True)
    assert chunk_from_outputs({"model_name": "llm", "model_version": "1"}, 3.0) is None


def test_result_from_chunks():
    chunks = [
        Chunk(" a", 10.5, 1, None, -0.1, 3, [{"1": {}}]),
        Chunk("", 10.6, 0, None, -0.1, 3, None),
        Chunk(" b c", 11.0, 2, "length", -0.4, 3, [{"2": {}}, {"3": {}}]),
    ]
    r = Result.from_chunks(chunks, t_start=10.0)
    assert (r.text, r.num_output_tokens, r.finish_reason, r.cumulative_logprob, r.num_input_tokens) == \
        (" a b c", 3, "length", -0.4, 3)
    assert r.logprobs == [{"1": {}}, {"2": {}}, {"3": {}}]
    assert r.num_chunks == 3
    assert r.ttft_s == pytest.approx(0.5) and r.total_s == pytest.approx(1.0)
    assert r.tokens_per_s == pytest.approx(3.0)


def _infer_result(outputs, final):
    """A ModelInferResponse as Triton would send it (raw_output_contents)."""
    resp = service_pb2.ModelInferResponse(model_name="llm")
    resp.parameters["triton_final_response"].bool_param = final
    for name, (dtype, arr) in outputs.items():
        out = resp.outputs.add(name=name, datatype=dtype, shape=list(arr.shape))
        resp.raw_output_contents.append(
            serialize_byte_tensor(arr).item() if dtype == "BYTES" else arr.tobytes())
    return InferResult(resp)


def test_parse_grpc_response():
    chunk, final = _parse_result(_infer_result({
        "text_output": ("BYTES", np.array([" wörld".encode()], dtype=np.object_)),
        "finish_reason": ("BYTES", np.array([b"stop"], dtype=np.object_)),
        "num_output_tokens": ("UINT32", np.array([2], dtype=np.uint32)),
        "cumulative_logprob": ("FP32", np.array([-0.25], dtype=np.float32)),
    }, final=True))
    assert final and chunk.final
    assert (chunk.text, chunk.finish_reason, chunk.num_output_tokens, chunk.cumulative_logprob) == \
        (" wörld", "stop", 2, -0.25)
    assert isinstance(chunk.num_output_tokens, int)


def test_parse_grpc_empty_final_response():
    assert _parse_result(_infer_result({}, final=True)) == (None, True)
    chunk, final = _parse_result(_infer_result(
        {"text_output": ("BYTES", np.array([b""], dtype=np.object_))}, final=False))
    assert not final and chunk.text == ""


@pytest.mark.parametrize("request_, field", [
    (GenerateRequest("Hi", max_tokens=np.int64(8)), "sampling_parameters"),
    (GenerateRequest("Hi", sampling={"logprobs": object()}), "sampling_parameters"),
    (GenerateRequest("lone \ud800 surrogate"), "text_input"),
])
def test_unencodable_request_is_the_same_client_error_on_every_transport(request_, field):
    """Refused before anything is sent, as INVALID_ARGUMENT naming the field, by gRPC, HTTP and
    asyncio alike (inside grpc.aio's request iterator the error used to reach the caller as
    asyncio.CancelledError; over HTTP as a raw TypeError)."""
    import asyncio

    from client import AsyncGrpcClient, ClientError, stream_grpc, stream_http

    def raises(fn):
        with pytest.raises(ClientError) as info:
            fn()
        assert info.value.code == "INVALID_ARGUMENT" and info.value.message.startswith(field + ":"), info.value
    raises(request_.input_values)
    unused = "127.0.0.1:9"   # nothing is sent, so nothing needs to listen
    raises(lambda: list(stream_grpc(unused, "llm", request_, timeout=5)))
    raises(lambda: list(stream_http(unused, "llm", request_, timeout=5)))

    async def via_asyncio():
        async with AsyncGrpcClient(unused) as c:
            return [chunk async for chunk in c.stream("llm", request_, timeout=5)]
    raises(lambda: asyncio.run(via_asyncio()))


def test_http_url_with_a_bad_port_is_a_client_error():
    from client import ClientError, stream_http
    with pytest.raises(ClientError) as info:
        list(stream_http("localhost:abc", "llm", GenerateRequest("Hi"), timeout=5))
    assert info.value.code == "INVALID_ARGUMENT" and "localhost:abc" in info.value.message
