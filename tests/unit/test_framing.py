"""Length-prefixed JSON frames: what the worker and log server accept and refuse."""

import asyncio
import struct

import pytest

from sagews import framing


def feed(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_round_trip_unicode():
    msg = {"type": "execute", "id": 7, "code": "print('Grüße, 世界')"}
    assert await framing.read_frame(feed(framing.encode(msg))) == msg


async def test_clean_end_of_stream_is_none():
    assert await framing.read_frame(feed(b"")) is None


async def test_oversized_frame_refused_before_reading_body():
    header = struct.pack(">I", 10_000_000)
    with pytest.raises(framing.FrameError) as err:
        await framing.read_frame(feed(header), max_size=1024)
    assert err.value.code == "too_large"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[1, 2]", "bad_message"),
        (b'"x"', "bad_message"),
    ],
)
async def test_malformed_bodies_get_typed_errors(body, code):
    with pytest.raises(framing.FrameError) as err:
        await framing.read_frame(feed(struct.pack(">I", len(body)) + body))
    assert err.value.code == code


async def test_truncated_frame_is_an_incomplete_read():
    data = framing.encode({"type": "ping"})[:-2]
    with pytest.raises(asyncio.IncompleteReadError):
        await framing.read_frame(feed(data))


def test_encode_is_one_buffer_with_exact_length():
    data = framing.encode({"a": "é"})
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
