"""adapters/hl7v2/framing.py: MLLP frames across reads, junk between frames, protocol violations."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.hl7v2.framing import FrameDecoder, FramingError, frame
from adapters.hl7v2.parser import ParseError


def test_frame() -> None:
    assert frame(b"MSH|x") == b"\x0bMSH|x\x1c\r"
    assert frame(b"") == b"\x0b\x1c\r"


def test_one_frame_one_read() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frame(b"MSH|a\rPID|1")) == [b"MSH|a\rPID|1"]
    assert decoder.at_boundary and decoder.buffered == 0


def test_several_frames_in_one_read() -> None:
    assert FrameDecoder().feed(frame(b"a") + frame(b"b") + frame(b"c")) == [b"a", b"b", b"c"]


def test_frame_split_across_reads_at_every_point() -> None:
    data = frame(b"MSH|first") + frame(b"MSH|second")
    for cut in range(len(data) + 1):
        decoder = FrameDecoder()
        assert decoder.feed(data[:cut]) + decoder.feed(data[cut:]) == [b"MSH|first", b"MSH|second"]


def test_byte_by_byte() -> None:
    decoder = FrameDecoder()
    out = [f for byte in frame(b"abc") + frame(b"def") for f in decoder.feed(bytes([byte]))]
    assert out == [b"abc", b"def"]


def test_partial_frame_is_not_at_boundary() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x0bMSH|") == [] and not decoder.at_boundary and decoder.buffered == 4
    assert decoder.feed(b"\x1c") == [] and not decoder.at_boundary
    assert decoder.feed(b"\r") == [b"MSH|"] and decoder.at_boundary


@pytest.mark.parametrize("junk", [b"\r\n", b"   ", b"\r", b"garbage\x00\xff", b"\x1c\r", b"\x1c"])
def test_junk_between_frames_is_discarded(junk: bytes) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(junk + frame(b"a") + junk + frame(b"b") + junk) == [b"a", b"b"]
    assert decoder.at_boundary


def test_payload_may_contain_any_byte_but_vt_and_fs() -> None:
    payload = bytes(b for b in range(256) if b not in (0x0B, 0x1C))
    assert FrameDecoder().feed(frame(payload)) == [payload]


def test_max_frame_size() -> None:
    assert FrameDecoder(max_frame=5).feed(frame(b"12345")) == [b"12345"]
    with pytest.raises(FramingError):
        FrameDecoder(max_frame=5).feed(frame(b"123456"))
    decoder = FrameDecoder(max_frame=5)
    decoder.feed(b"\x0b123")
    with pytest.raises(FramingError):
        decoder.feed(b"456")  # raised before the end block arrives


def test_default_max_frame_is_16_mib() -> None:
    assert FrameDecoder().max_frame == 16 * 1024 * 1024


@pytest.mark.parametrize("stream", [b"\x0babc\x0bdef\x1c\r", b"\x0babc\x1cX", b"\x0babc\x1c\x1c\r"])
def test_protocol_violations(stream: bytes) -> None:
    with pytest.raises(FramingError):
        FrameDecoder().feed(stream)


def test_fs_without_cr_across_reads() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x0babc\x1c")
    with pytest.raises(FramingError):
        decoder.feed(b"\x0b")


def test_framing_and_parse_errors_are_distinct() -> None:
    assert not issubclass(FramingError, ParseError) and not issubclass(ParseError, FramingError)


_PAYLOAD = st.binary(max_size=60).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))
_JUNK = st.sampled_from([b"", b"", b"\r", b"\n", b" \r\n", b"xx"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_JUNK, _PAYLOAD), max_size=6), st.lists(st.integers(0, 400), max_size=12))
def test_any_chunking_yields_the_same_frames(frames: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
    stream = b"".join(junk + frame(payload) for junk, payload in frames)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder()
    out = [f for a, b in itertools.pairwise(points) for f in decoder.feed(stream[a:b])]
    assert out == [payload for _, payload in frames]
    assert decoder.at_boundary
