"""Unit tests: the incremental SSE parser."""

import json

from client import SSEParser

STREAM = ('data: {"text_output":" Once"}\n\n'
          ': keep-alive comment\n\n'
          'data: {"text_output":" upon ☃"}\r\n\r\n'
          'event: message\nid: 3\ndata: {"text_output":\ndata: " a"}\r\r'
          'data:{"text_output":" time"}\n\n').encode()
EXPECTED = ['{"text_output":" Once"}', '{"text_output":" upon ☃"}',
            '{"text_output":\n" a"}', '{"text_output":" time"}']


def test_whole_buffer():
    assert SSEParser().feed(STREAM) == EXPECTED


def test_every_split_point_gives_the_same_events():
    # Includes splits inside "\r\n" and inside the multi-byte snowman.
    for cut in range(len(STREAM) + 1):
        p = SSEParser()
        assert p.feed(STREAM[:cut]) + p.feed(STREAM[cut:]) == EXPECTED, cut


def test_byte_by_byte():
    p = SSEParser()
    events = [e for i in range(len(STREAM)) for e in p.feed(STREAM[i:i + 1])]
    assert events == EXPECTED
    assert [json.loads(e)["text_output"] for e in events] == [" Once", " upon ☃", " a", " time"]


def test_event_waits_for_blank_line():
    p = SSEParser()
    assert p.feed(b'data: {"a":1}\n') == []
    assert p.feed(b"\n") == ['{"a":1}']
    assert p.feed(b"\n\n") == []  # blank lines with no data dispatch nothing


def test_an_event_ended_by_bare_carriage_returns_is_dispatched_at_once():
    """A bare "\\r" is a line end (SSE): the event it completes must not wait for more bytes (the
    last event of a stream used to be lost), and a "\\n" arriving next is the rest of "\\r\\n"."""
    p = SSEParser()
    assert p.feed(b'data: {"a":1}\r\r') == ['{"a":1}']
    assert p.feed(b'\ndata: {"b":2}\r') == []      # the "\n" ends the blank line's "\r\n"
    assert p.feed(b"\n\r") == ['{"b":2}']
    assert p.feed(b"") == [] and p.feed(b'data: {"c":3}\n\n') == ['{"c":3}']
