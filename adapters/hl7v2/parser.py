"""HL7 v2 text → `Message`: fast, tolerant, pure (docs/hl7v2-contracts.md, "Parser").

The message is split into segment lines once; fields, repetitions and components are split only
when asked for, and escape sequences are decoded only in the values returned. That keeps a parse of
a typical 1.5 KB ADT at a few tens of microseconds (bench/hl7_parse.py).

What is tolerated, because senders do it: segments ended by CR, LF or CRLF and stray blank lines;
a byte-order mark; non-default encoding characters (HL7 v2.5 §2.5.4), a truncation character
(v2.7 §2.5.5.6) and a doubled escape character in MSH-2; Z-segments (kept as segments like any
other); ADD continuation segments, joined to the segment they continue (HL7 v2.5 §2.10.2: ADD-1
continues the preceding segment's last field, further ADD fields are its next fields); unknown or
unterminated escape sequences (kept literally).
What is not: text that does not start with an MSH segment, an MSH without MSH-9, and lines whose
first three characters are not a segment name — those raise `ParseError` with an HL7 table 0357
code and an ERR-2 style location, for the ACK.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from mappings.result import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    ErrorLocation,
)

__all__ = [
    "DEFAULT_ENCODING",
    "Encoding",
    "Field",
    "Message",
    "ParseError",
    "Segment",
    "decode_bytes",
    "parse_message",
    "split_batch",
]

_SEGMENT_NAME = re.compile(r"[A-Z0-9]{3}\Z")
_ENVELOPE = frozenset({"FHS", "BHS", "BTS", "FTS"})
_NULL = '""'


class ParseError(Exception):
    """Text that is not an HL7 v2 message: `code` from HL7 table 0357, `location` for ERR-2."""

    def __init__(self, code: str, message: str, location: ErrorLocation | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.location = location


@dataclass(frozen=True, slots=True)
class Encoding:
    """The message's delimiters, from MSH-1 and MSH-2 (HL7 v2.5 §2.5.4; truncation v2.7 §2.5.5.6)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def characters(self) -> str:
        """MSH-2 as it should be written with these delimiters."""
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation

    def unescape(self, text: str) -> str:
        """Decode escape sequences (HL7 v2.5 §2.7); anything not understood is kept literally."""
        if not self.escape or self.escape not in text:
            return text
        return _unescape(text, self)

    def escape_text(self, text: str) -> str:
        """Encode `text` for a field value: delimiters → \\F\\ \\S\\ …, line breaks → \\.br\\.

        Other control characters are dropped: they could end a segment or an MLLP frame.
        """
        e = self.escape
        if e:
            text = text.replace(e, f"{e}E{e}")
            for char, code in ((self.field, "F"), (self.component, "S"), (self.repetition, "R"),
                               (self.subcomponent, "T"), (self.truncation, "P")):
                if char and char != "\x00":
                    text = text.replace(char, f"{e}{code}{e}")
            text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", f"{e}.br{e}")
        return _CONTROL.sub("", text)


DEFAULT_ENCODING = Encoding()
# Control characters that must not reach a field: they end segments or MLLP frames.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

_FORMATTING = re.compile(r"(?:H|N|\.(?:sp|in|ti|sk)[+-]?\d*|\.(?:fi|nf|ce)|C[0-9A-Fa-f]{4}"
                         r"|M[0-9A-Fa-f]{4}(?:[0-9A-Fa-f]{2})?|Z.*)\Z", re.DOTALL)
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+\Z")


def _unescape(text: str, enc: Encoding) -> str:
    parts = text.split(enc.escape)
    out = [parts[0]]
    last = len(parts) - 1
    # Odd-numbered parts are between an opening and a closing escape character.
    i = 1
    while i <= last:
        seq = parts[i]
        if i == last:  # unterminated: keep literally
            out.append(enc.escape + seq)
            break
        decoded = _escape_sequence(seq, enc)
        if decoded is None:
            # Not an escape sequence (e.g. an unescaped Windows path): keep the escape character
            # and resynchronise on the next one.
            out.append(enc.escape + seq)
            i += 1
            continue
        out.append(decoded)
        out.append(parts[i + 1])
        i += 2
    return "".join(out)


def _escape_sequence(seq: str, enc: Encoding) -> str | None:
    simple = {"F": enc.field, "S": enc.component, "T": enc.subcomponent, "R": enc.repetition,
              "E": enc.escape, ".br": "\n"}.get(seq)
    if simple is not None:
        return simple
    if seq == "P" and enc.truncation:
        return enc.truncation
    if seq[:1] == "X" and _HEX.match(seq, 1):
        raw = bytes.fromhex(seq[1:])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")
    if seq and _FORMATTING.match(seq):
        return ""
    return None


class Field:
    """One repetition of a field: components of subcomponents, decoded."""

    __slots__ = ("_components", "_enc", "_values", "raw")

    def __init__(self, raw: str, encoding: Encoding = DEFAULT_ENCODING) -> None:
        self.raw = raw
        self._enc = encoding
        # Both split on first use: `_values` (each component's first subcomponent) is what maps read
        # almost always, and is cheaper to build than the full `_components`.
        self._components: tuple[tuple[str, ...], ...] | None = None
        self._values: list[str] | None = None

    @property
    def components(self) -> tuple[tuple[str, ...], ...]:
        """Every component as a tuple of its decoded subcomponents (split and decoded once)."""
        comps = self._components
        if comps is None:
            comps = self._components = _split_components(self.raw, self._enc)
        return comps

    def subcomponent(self, i: int, j: int) -> str:
        """Component `i`, subcomponent `j` (1-based), decoded; "" if absent."""
        if j == 1:
            return self.component(i)
        if self._enc.subcomponent not in self.raw:
            return ""  # every component is a single subcomponent
        comps = self.components
        if 0 < i <= len(comps):
            subs = comps[i - 1]
            if 0 < j <= len(subs):
                return subs[j - 1]
        return ""

    def component(self, i: int) -> str:
        """Component `i` (1-based): its first subcomponent, decoded; "" if absent."""
        values = self._values
        if values is None:
            values = self._values = _first_subcomponents(self.raw, self._enc)
        return values[i - 1] if 0 < i <= len(values) else ""

    @property
    def text(self) -> str:
        """Component 1."""
        return self.component(1)

    @property
    def is_null(self) -> bool:
        """The explicit null `""` (HL7 v2.5 §2.5.3: delete the value held by the receiver)."""
        return self.raw == _NULL

    @property
    def is_empty(self) -> bool:
        """No value in any component (not even an explicit null)."""
        return not self.raw.strip(self._enc.component + self._enc.subcomponent)

    def __repr__(self) -> str:
        return f"Field({self.raw!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Field) and self.raw == other.raw and self._enc == other._enc

    def __hash__(self) -> int:
        return hash(self.raw)


def _split_components(raw: str, enc: Encoding) -> tuple[tuple[str, ...], ...]:
    """`raw` split into components of subcomponents, escape sequences decoded. Most fields have no
    subcomponent or escape character, and skip that work."""
    components = raw.split(enc.component)
    if enc.subcomponent not in raw:
        if not enc.escape or enc.escape not in raw:
            return tuple([(c,) for c in components])
        return tuple([(enc.unescape(c),) for c in components])
    return tuple([tuple([enc.unescape(s) for s in c.split(enc.subcomponent)]) for c in components])


def _first_subcomponents(raw: str, enc: Encoding) -> list[str]:
    """Each component's first subcomponent, decoded: `Field.component` without the tuples of `components`."""
    values = raw.split(enc.component)
    if enc.subcomponent in raw:
        values = [v.split(enc.subcomponent, 1)[0] for v in values]
    if enc.escape and enc.escape in raw:
        values = [enc.unescape(v) for v in values]
    return values


_EMPTY_FIELD = Field("")


class Segment:
    """One segment, with HL7 field numbering (for MSH, MSH-1 is the field separator itself)."""

    __slots__ = ("_parts", "_repetitions", "encoding", "name", "occurrence", "raw")

    def __init__(self, name: str, occurrence: int, raw: str, encoding: Encoding) -> None:
        self.name = name
        self.occurrence = occurrence
        self.raw = raw
        self.encoding = encoding
        self._parts: list[str] | None = None
        # Fields split once: a map reads the same field several times, and a Field decodes itself once.
        self._repetitions: dict[int, tuple[Field, ...]] = {}

    def _fields(self) -> list[str]:
        # parts[n] is field n for every segment: for MSH, parts[1] is MSH-1 (the separator).
        parts = self._parts
        if parts is None:
            parts = self.raw.split(self.encoding.field)
            if self.name in _HEADERS:
                parts.insert(1, self.encoding.field)
            self._parts = parts
        return parts

    def __len__(self) -> int:
        return len(self._fields()) - 1

    def raw_field(self, n: int) -> str:
        """Field `n` as sent (encoded, all repetitions); "" if absent."""
        parts = self._fields()
        return parts[n] if 0 < n < len(parts) else ""

    def present_fields(self) -> list[int]:
        """Numbers of the fields that have any content, the explicit null `""` included, in order."""
        parts = self._fields()
        return [n for n in range(1, len(parts)) if parts[n]]

    def is_present(self, field: int) -> bool:
        """Whether field `field` has any content, the explicit null `""` included."""
        return self.raw_field(field) != ""

    def repetitions(self, field: int) -> list[Field]:
        """Every repetition of field `field`; [] if the field is empty."""
        return list(self._cached_repetitions(field))

    def _split(self, field: int) -> tuple[Field, ...]:
        parts = self._fields()
        raw = parts[field] if 0 < field < len(parts) else ""
        if not raw:
            return ()
        enc = self.encoding
        if self.name in _HEADERS and field <= 2:
            return (Field(raw, _LITERAL),)
        if enc.repetition not in raw:  # most fields
            return (Field(raw, enc),)
        return tuple([Field(r, enc) for r in raw.split(enc.repetition)])

    def _cached_repetitions(self, field: int) -> tuple[Field, ...]:
        found = self._repetitions.get(field)
        if found is None:
            found = self._repetitions[field] = self._split(field)
        return found

    def field(self, n: int) -> Field:
        """The first repetition of field `n` (an empty Field if absent)."""
        reps = self._cached_repetitions(n)
        return reps[0] if reps else _EMPTY_FIELD

    def value(self, field: int, component: int = 1, subcomponent: int = 1,
              repetition: int = 1) -> str:
        """One decoded value; "" if absent; the explicit null comes back as the string `""`."""
        raw = self.raw_field(field)
        if not raw or component < 1 or subcomponent < 1 or repetition < 1:
            return ""
        if self.name in _HEADERS and field <= 2:
            return raw if component == subcomponent == repetition == 1 else ""
        enc = self.encoding
        if enc.repetition in raw:
            reps = raw.split(enc.repetition)
            if repetition > len(reps):
                return ""
            raw = reps[repetition - 1]
        elif repetition != 1:
            return ""
        if enc.component in raw:
            comps = raw.split(enc.component)
            if component > len(comps):
                return ""
            raw = comps[component - 1]
        elif component != 1:
            return ""
        if enc.subcomponent in raw:
            subs = raw.split(enc.subcomponent)
            if subcomponent > len(subs):
                return ""
            raw = subs[subcomponent - 1]
        elif subcomponent != 1:
            return ""
        return enc.unescape(raw)

    def __repr__(self) -> str:
        return f"Segment({self.name!r}, {self.occurrence}, {self.raw[:40]!r})"


# Segments whose field 1 is the field separator (HL7 v2.5 §2.14.9, §2.14.4, §2.14.1).
_HEADERS = frozenset({"MSH", "FHS", "BHS"})
# MSH-1/MSH-2 are returned as sent, never split or unescaped.
_LITERAL = Encoding("\x00", "\x00", "\x00", "", "\x00")


class Message:
    """A parsed message: its segments in order and the header fields every layer needs."""

    def __init__(self, segments: tuple[Segment, ...], encoding: Encoding) -> None:
        self.segments = segments
        self.encoding = encoding
        self._by_name: dict[str, list[Segment]] | None = None

    def all(self, name: str) -> list[Segment]:
        """Every segment called `name`, in order."""
        if self._by_name is None:
            by_name: dict[str, list[Segment]] = {}
            for seg in self.segments:
                by_name.setdefault(seg.name, []).append(seg)
            self._by_name = by_name
        return list(self._by_name.get(name, ()))

    def first(self, name: str) -> Segment | None:
        """The first segment called `name`, or None."""
        for seg in self.segments:
            if seg.name == name:
                return seg
        return None

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def _msh(self, field: int, component: int = 1) -> str:
        # The same as `.value(field, component)`, from the header fields split once (each is read often).
        return self.segments[0].field(field).component(component)

    @property
    def message_code(self) -> str:
        """MSH-9.1, e.g. "ADT"."""
        return self._msh(9, 1)

    @property
    def trigger(self) -> str:
        """MSH-9.2, e.g. "A01"."""
        return self._msh(9, 2)

    @property
    def structure(self) -> str:
        """MSH-9.3, e.g. "ADT_A01" ("" when the sender leaves it out)."""
        return self._msh(9, 3)

    @property
    def message_type(self) -> str:
        """"ADT^A01": the key message maps are registered by."""
        return f"{self.message_code}^{self.trigger}" if self.trigger else self.message_code

    @property
    def control_id(self) -> str:
        """MSH-10."""
        return self._msh(10)

    @property
    def sending_application(self) -> str:
        """MSH-3.1."""
        return self._msh(3)

    @property
    def sending_facility(self) -> str:
        """MSH-4.1 (for NHS trusts, the ODS code)."""
        return self._msh(4)

    @property
    def receiving_application(self) -> str:
        """MSH-5.1."""
        return self._msh(5)

    @property
    def receiving_facility(self) -> str:
        """MSH-6.1."""
        return self._msh(6)

    @property
    def timestamp(self) -> str:
        """MSH-7.1 as sent."""
        return self._msh(7)

    @property
    def processing_id(self) -> str:
        """MSH-11.1 (P, T, D)."""
        return self._msh(11)

    @property
    def version(self) -> str:
        """MSH-12.1, e.g. "2.4"."""
        return self._msh(12)

    @property
    def accept_ack_type(self) -> str:
        """MSH-15 (HL7 table 0155: AL, NE, ER, SU)."""
        return self._msh(15)

    @property
    def application_ack_type(self) -> str:
        """MSH-16 (HL7 table 0155)."""
        return self._msh(16)

    @property
    def charset(self) -> str:
        """MSH-18 (first repetition), e.g. "UNICODE UTF-8"."""
        return self._msh(18)

    def __repr__(self) -> str:
        return f"Message({self.message_type!r}, {self.control_id!r}, {len(self.segments)} segments)"


def _lines(text: str) -> list[str]:
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return text.split("\r")


def _encoding(msh: str) -> Encoding:
    """Delimiters from MSH-1/MSH-2 (HL7 v2.5 §2.5.4)."""
    if len(msh) < 5:
        raise ParseError(REQUIRED_FIELD_MISSING, "MSH segment too short: no encoding characters",
                         ErrorLocation("MSH", 1, 2))
    fs = msh[3]
    if fs.isalnum() or fs.isspace():
        raise ParseError(DATA_TYPE_ERROR, f"MSH-1 field separator {fs!r} is not a delimiter",
                         ErrorLocation("MSH", 1, 1))
    end = msh.find(fs, 4)
    chars = msh[4:] if end < 0 else msh[4:end]
    if len(chars) == 5 and chars[2] == chars[3]:
        # "^~\\&": an escaped backslash from a source-code string literal (LinuxForHealth samples).
        chars = chars[:3] + chars[4]
    if not chars or len(chars) > 5 or len(set(chars + fs)) != len(chars) + 1 \
            or any(c.isalnum() or c.isspace() for c in chars):
        raise ParseError(DATA_TYPE_ERROR, f"MSH-2 encoding characters {chars!r} are not valid",
                         ErrorLocation("MSH", 1, 2))
    if fs == "|" and chars == "^~\\&":
        return DEFAULT_ENCODING
    # A short MSH-2 leaves the missing delimiters unused: NUL never occurs in sane text.
    return Encoding(fs, chars[0], chars[1] if len(chars) > 1 else "\x00",
                    chars[2] if len(chars) > 2 else "", chars[3] if len(chars) > 3 else "\x00",
                    chars[4] if len(chars) > 4 else "")


def parse_message(text: str) -> Message:
    """Parse one HL7 v2 message (HL7 v2.5 ch. 2, "Message construction rules").

    >>> m = parse_message("MSH|^~\\\\&|PAS|RX1|SC|SC|20240101||ADT^A01^ADT_A01|42|P|2.4\\rPID|||123^^^RX1^MR")
    >>> m.trigger, m.first("PID").value(3, 4)
    ('A01', 'RX1')

    Raises `ParseError` (table 0357 code 100 for a missing MSH or a bad segment name, 101 for a
    missing MSH-9, 102 for unusable encoding characters); `location` names the segment (and MSH
    field) at fault, the message text names the line.
    """
    text = text.lstrip("\ufeff\x0b\r\n \t").rstrip("\x1c\r\n")
    lines = _lines(text)
    first = lines[0] if lines else ""
    if not first.startswith("MSH"):
        raise ParseError(SEGMENT_SEQUENCE_ERROR, "message does not start with an MSH segment",
                         ErrorLocation("MSH", 1))
    encoding = _encoding(first)
    fs = encoding.field
    counts: dict[str, int] = {}
    segments: list[Segment] = []
    append = segments.append
    for number, line in enumerate(lines, 1):
        if not line or line.isspace():
            continue
        name = line[:3]
        if not _SEGMENT_NAME.match(name) or (len(line) > 3 and line[3] != fs):
            raise ParseError(SEGMENT_SEQUENCE_ERROR,
                             f"line {number}: {line[:20]!r} does not start with a segment name",
                             ErrorLocation(name if _SEGMENT_NAME.match(name) else "", 1))
        if name == "ADD" and segments and segments[-1].name not in _HEADERS:
            segments[-1] = continued(segments[-1], line)
            continue
        occurrence = counts.get(name, 0) + 1
        counts[name] = occurrence
        append(Segment(name, occurrence, line, encoding))
    message = Message(tuple(segments), encoding)
    if not message.message_code:
        raise ParseError(REQUIRED_FIELD_MISSING, "MSH-9 message type is missing",
                         ErrorLocation("MSH", 1, 9))
    return message


def continued(segment: Segment, add: str) -> Segment:
    """`segment` with an ADD segment's fields joined on (HL7 v2.5 §2.10.2, "Continuation messages and
    segments"): ADD-1 is appended to the segment's last field as is, and ADD-2… become the fields
    after it. An empty ADD (`ADD` or `ADD|`) adds nothing.

    >>> nte = parse_message("MSH|^~\\\\&|A|B|C|D|1||ORU^R01|1|P|2.5\\rNTE|1|L|Fasting \\rADD|sample|2").first("NTE")
    >>> nte.value(3), nte.value(4)
    ('Fasting sample', '2')
    """
    return Segment(segment.name, segment.occurrence, segment.raw + add[4:], segment.encoding)


def split_batch(text: str) -> list[str]:
    """The messages in a file or batch, FHS/BHS/BTS/FTS envelope segments removed (HL7 v2.5 §2.10.3).

    Each message starts at an MSH line; segments are joined with CR. Lines before the first MSH
    that are not envelope segments come back as a message of their own, so that parsing them
    reports the error instead of silently dropping them.
    """
    messages: list[list[str]] = []
    current: list[str] | None = None
    for line in _lines(text.lstrip("\ufeff")):
        if not line or line.isspace():
            continue
        head = line[:3]
        if head in _ENVELOPE:
            current = None
            continue
        if head == "MSH" or current is None:
            current = []
            messages.append(current)
        current.append(line)
    return ["\r".join(m) for m in messages]


# HL7 table 0211 → Python codecs.
_CHARSETS = {
    "ASCII": "ascii",
    "8859/1": "latin-1", "8859/2": "iso8859-2", "8859/3": "iso8859-3", "8859/4": "iso8859-4",
    "8859/5": "iso8859-5", "8859/6": "iso8859-6", "8859/7": "iso8859-7", "8859/8": "iso8859-8",
    "8859/9": "iso8859-9", "8859/15": "iso8859-15",
    "UNICODE": "utf-8", "UNICODE UTF-8": "utf-8",
    "GB 18030-2000": "gb18030", "BIG-5": "big5", "KS X 1001": "euc-kr", "ISO IR87": "iso2022-jp",
}


def decode_bytes(raw: bytes) -> str:
    """Bytes → text: BOM removed, charset from MSH-18 (HL7 table 0211); never raises.

    Unknown or undeclared charsets are read as UTF-8; bytes that are not valid in the declared
    charset fall back to UTF-8 and then Latin-1 (which decodes anything).
    """
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16", errors="replace")
    codec = _CHARSETS.get(_declared_charset(raw), "utf-8")
    for candidate in (codec, "utf-8"):
        try:
            return raw.decode(candidate)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


def _declared_charset(raw: bytes) -> str:
    """MSH-18.1 of the first MSH, read from the ASCII-compatible header bytes."""
    start = raw.find(b"MSH")
    if start < 0:
        return ""
    end = min((i for i in (raw.find(b"\r", start), raw.find(b"\n", start)) if i >= 0),
              default=len(raw))
    header = raw[start:end].decode("latin-1")
    if len(header) < 4:
        return ""
    fields = header.split(header[3])
    if len(fields) <= 17:
        return ""
    value = fields[17]
    for sep in (fields[1][1:2], fields[1][:1]):  # repetition, then component separator
        if sep and not sep.isalnum():
            value = value.split(sep)[0]
    return value.strip().upper()
