"""MLLP framing, pure: bytes in, whole frames out (HL7 v2.5.1 Transport Specification: MLLP, release 2).

A frame is `<VT> payload <FS><CR>` (0x0B … 0x1C 0x0D). The decoder knows nothing of sockets: the
transport feeds it what it reads and writes what `frame` returns. Its errors (`FramingError`) mean
the byte stream can no longer be trusted and the connection should be closed; they are a different
type from `parser.ParseError`, which becomes a NACK on a healthy connection.
"""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_FRAME", "END_BLOCK", "START_BLOCK", "FrameDecoder", "FramingError", "frame"]

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
_VT = 0x0B
_FS = 0x1C
_CR = 0x0D


class FramingError(Exception):
    """The stream broke the MLLP rules (oversized frame, start inside a frame, FS without CR)."""


def frame(payload: bytes) -> bytes:
    """Wrap one message for MLLP.

    >>> frame(b"MSH|^~\\\\&|A")
    b'\\x0bMSH|^~\\\\&|A\\x1c\\r'
    """
    return START_BLOCK + payload + END_BLOCK


class FrameDecoder:
    """Incremental MLLP decoder: `feed` the bytes read, get back the frames they complete.

    Bytes outside a frame (whitespace, junk, a stray CR after a frame) are discarded. A frame larger
    than `max_frame` bytes, a start block inside a frame, or an end block not followed by CR raises
    `FramingError`; after that the decoder's state is undefined — close the connection.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._in_frame = False
        self._pending_fs = False  # the last read ended on FS; CR must come next

    @property
    def at_boundary(self) -> bool:
        """True when no frame is partly received (a connection may end here without loss)."""
        return not self._in_frame

    @property
    def buffered(self) -> int:
        """Bytes held for the frame being received."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes read from the connection; return the payloads of the frames they complete."""
        data = bytes(data)
        view = memoryview(data)
        frames: list[bytes] = []
        pos, size = 0, len(data)
        while pos < size:
            if not self._in_frame:
                start = data.find(_VT, pos)
                if start < 0:
                    break  # nothing but junk or whitespace between frames
                self._in_frame = True
                pos = start + 1
            elif self._pending_fs:
                self._end(data[pos], frames)
                pos += 1
            else:
                pos = self._take(data, view, pos, frames)
        return frames

    def _take(self, data: bytes, view: memoryview, pos: int, frames: list[bytes]) -> int:
        """Consume bytes of the open frame from `pos`; return where the frame's bytes stop."""
        fs = data.find(_FS, pos)
        stop = len(data) if fs < 0 else fs
        if data.find(_VT, pos, stop) >= 0:
            raise FramingError("MLLP start block inside a frame (previous frame not ended)")
        if len(self._buffer) + stop - pos > self.max_frame:
            raise FramingError(f"MLLP frame larger than {self.max_frame} bytes")
        self._buffer += view[pos:stop]
        if fs < 0:
            return stop
        self._pending_fs = True
        if fs + 1 < len(data):
            self._end(data[fs + 1], frames)
            return fs + 2
        return fs + 1

    def _end(self, byte: int, frames: list[bytes]) -> None:
        if byte != _CR:
            raise FramingError("MLLP end block 0x1C not followed by 0x0D")
        frames.append(bytes(self._buffer))
        self._buffer.clear()
        self._in_frame = False
        self._pending_fs = False
