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
