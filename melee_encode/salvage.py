"""Salvaging replays that peppi cannot read: repairing their bytes, then parsing them again.

This module owns the `.slp` container at the byte level (Slippi's replay spec): the `raw` element,
`{U\\x03raw[$U#l` and a big-endian int32 length (0 while a file is being written), holding the event
stream: each event a command byte and a payload whose size the first event (Event Payloads, 0x35)
gives; then the `metadata` element and a closing `}`. Each repair is tried only after peppi failed
with the error it answers (read_as_3_7 also before peppi is called, see below):

- `cut_truncated`, for "failed to fill whole buffer" (peppi read past the end): a replay that ends
  mid-event (Dolphin crashed, a disconnect, a copy cut short) is cut after its last complete frame,
  its raw length set and its metadata dropped. A frame is complete at its Frame Bookend (0x3C,
  replay >= 3.0); older replays have none, so there a frame is complete once every character that
  sent a Pre-Frame (0x37) of it sent its Post-Frame (0x38): a frame's pre-frames come first.
- `read_as_3_7`, for peppi-py 0.8.6's panic "A StructArray must contain at least one field", which
  every replay of version 3.0 to 3.6 triggers: peppi builds a frame-end struct for replays >= 3.0
  whose only field, `latest_finalized_frame`, arrived in 3.7 (peppi's gen/resources/frames.json
  and the generated `End::data_type` in src/frame/immutable/peppi.rs), and arrow2 refuses a struct
  without fields. The repair labels the stream 3.7.0 and zero-pads each payload to its 3.7 size:
  peppi reads fields in order, by version, and new fields only ever go at a payload's end. The
  padded fields are dropped after parsing (`replay.drop_sources`), so a game never holds a field
  its replay did not record. This one is made before peppi is called when the replay declares a
  3.0-3.6 version, which spares the panic and the backtrace it prints. `read_salvaging` parses and
  repairs as peppi's errors call for.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass

from .errors import ReplayError
from .replay import OPTIONAL_SOURCES, SOURCE_VERSIONS, RawGame, drop_sources, read_replay
from .sources import ReplaySource, local_replay_path

HEADER = b"{U\x03raw[$U#l"
PAYLOADS, GAME_START, PRE, POST, GAME_END, FRAME_START, ITEM, BOOKEND = 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x3B, 0x3C
TRUNCATED = "failed to fill whole buffer"  # peppi's I/O error when the bytes end mid-read
EMPTY_FRAME_END = "A StructArray must contain at least one field"  # arrow2's, in peppi-py's panic

# Payload sizes (bytes after the command byte) from the version that set each, as peppi reads the
# events: Slippi's spec and peppi's frames.json, checked against every replay in ../shared.
PAYLOAD_SIZES = {
    GAME_START: (
        ((0, 1, 0), 320),
        ((1, 0, 0), 352),
        ((1, 3, 0), 416),
        ((1, 5, 0), 417),
        ((2, 0, 0), 418),
        ((3, 7, 0), 420),
        ((3, 9, 0), 584),
        ((3, 11, 0), 700),
        ((3, 12, 0), 701),
        ((3, 14, 0), 760),
    ),
    PRE: (((0, 1, 0), 58), ((1, 2, 0), 59), ((1, 4, 0), 63), ((3, 15, 0), 64), ((3, 17, 0), 66)),
    POST: (
        ((0, 1, 0), 33),
        ((0, 2, 0), 37),
        ((2, 0, 0), 51),
        ((2, 1, 0), 52),
        ((3, 5, 0), 72),
        ((3, 8, 0), 76),
        ((3, 11, 0), 80),
        ((3, 16, 0), 84),
    ),
    GAME_END: (((0, 1, 0), 1), ((2, 0, 0), 2), ((3, 13, 0), 6)),
    FRAME_START: (((2, 2, 0), 8), ((3, 10, 0), 12)),
    ITEM: (((3, 0, 0), 37), ((3, 2, 0), 41), ((3, 6, 0), 42), ((3, 16, 0), 44)),
    BOOKEND: (((3, 0, 0), 4), ((3, 7, 0), 8)),
}
FRAME_EVENTS = (FRAME_START, PRE, POST, ITEM, BOOKEND)  # each payload starts with the frame id


class SalvageError(Exception):
    """A replay that a repair cannot fix; the message is the one-line reason."""


@dataclass(frozen=True)
class Repair:
    """Repaired `.slp` bytes and what was done to them."""

    data: bytes
    fix: str  # the function that made it
    note: str  # one line, recorded in the game's `salvaged` column
    version: str = ""  # the replay's own version, where the repaired stream claims another
    absent: tuple[str, ...] = ()  # optional sources (replay.OPTIONAL_SOURCES) its payloads do not hold


@dataclass
class _Stream:
    """A replay's event stream: the Event Payloads table and the complete events after it."""

    data: bytes  # the stream's bytes as found (possibly cut short)
    sizes: dict[int, int]  # command byte -> payload size
    events: list[tuple[int, int, int]]  # (command, start, end) of each complete event, in order
    version: tuple[int, int, int]
    tail: bytes  # what follows the stream in a whole file: the metadata element and "}"
    closed: bool  # the raw length is set, the stream that long, and the file ends with "}"


def read_salvaging(source: ReplaySource, data: bytes, items: bool = True) -> RawGame:
    """Parse a replay's `.slp` bytes with peppi, repairing them when peppi's error calls for it.

    The game's `info.salvaged` says what was repaired ("" for a whole replay). Raises `ReplayError`
    with peppi's reason, and why salvage failed where it was tried.
    """
    repairs: list[Repair] = []
    if (3, 0, 0) <= _declared_version(data) < (3, 7, 0):  # peppi would panic (and print a Rust backtrace): repair first
        repairs.append(read_as_3_7(data))
        data = repairs[-1].data
    while True:
        try:
            with local_replay_path(dataclasses.replace(source, data=data) if repairs else source, data) as path:
                raw = read_replay(path, items=items)
            break
        except ReplayError as error:
            repairs.append(_repair(error, data, repairs))
            data = repairs[-1].data
    for repair in repairs:
        if repair.version or repair.absent:
            raw = drop_sources(raw, repair.absent, repair.version)
    if repairs:
        raw.info = dataclasses.replace(raw.info, salvaged="; ".join(r.note for r in repairs))
    return raw


def _repair(error: ReplayError, data: bytes, done: list[Repair]) -> Repair:
    """The first repair not yet made that answers peppi's `error`; else raises the error, with why
    salvage failed and what it did before."""
    made = {r.fix for r in done}
    reason = ""
    for fix in (fix for message, fixes in _FIXES.items() if message in str(error) for fix in fixes if fix.__name__ not in made):
        try:
            return fix(data)
        except SalvageError as why:
            reason = str(why)
    after = "; ".join(r.note for r in done)
    if reason:
        raise ReplayError(f"{error} (not salvaged: {reason}{f'; after {after}' if after else ''})") from None
    if after:
        raise ReplayError(f"{error} (after salvage: {after})") from None
    raise error


def read_as_3_7(data: bytes) -> Repair:
    """Label a 3.0-3.6 replay 3.7.0, its payloads zero-padded to their 3.7 sizes."""
    stream = _read_stream(data)
    if not (3, 0, 0) <= stream.version < (3, 7, 0):
        raise SalvageError(f"version {_dotted(stream.version)} is not one of 3.0-3.6, the ones peppi-py 0.8.6 panics on")
    raw, _ = _padded(stream, (3, 7, 0))
    note = f"version {_dotted(stream.version)} read as 3.7.0 (peppi-py 0.8.6 panics on 3.0-3.6)"
    return Repair(_container(raw, stream.tail), "read_as_3_7", note, _dotted(stream.version), _absent(stream))


def cut_truncated(data: bytes) -> Repair:
    """Cut a replay that ends mid-event after its last complete frame (see the module docstring)."""
    stream = _read_stream(data)
    game_end = [end for code, _, end in stream.events if code == GAME_END]
    if game_end and stream.closed:
        raise SalvageError("not truncated: the stream has its Game End and the file is closed")
    if game_end:
        return Repair(
            _container(stream.data[: game_end[0]]), "cut_truncated", "truncated after Game End: metadata dropped, every frame kept"
        )
    has_bookends = stream.version >= (3, 0, 0) and BOOKEND in stream.sizes
    complete = _bookend_ends(stream) if has_bookends else _post_frame_ends(stream)
    if not complete:
        raise SalvageError("truncated before the first complete frame")
    frame, end = complete[-1]
    starts = [start for code, start, _ in stream.events if code in FRAME_EVENTS]
    if stream.events[-1][2] + 5 <= len(stream.data) and stream.data[stream.events[-1][2]] in FRAME_EVENTS:
        starts.append(stream.events[-1][2])  # the event cut short: its frame id was sent
    last_sent = max(_frame_id(stream.data, start) for start in starts)
    return Repair(_container(stream.data[:end]), "cut_truncated", f"truncated: cut after frame {frame} of {last_sent} sent")


_FIXES = {TRUNCATED: (cut_truncated,), EMPTY_FRAME_END: (read_as_3_7,)}


def _payload_sizes(version: tuple[int, int, int]) -> dict[int, int]:
    """The payload size peppi reads for each event of a replay of `version`."""
    return {code: max((size for since, size in steps if since <= version), default=0) for code, steps in PAYLOAD_SIZES.items()}


def _padded(stream: _Stream, version: tuple[int, int, int]) -> tuple[bytes, dict[int, int]]:
    """The stream with payloads zero-padded to `version`'s sizes and game start saying `version`,
    and the bytes added to each padded event."""
    wanted = _payload_sizes(version)
    padded = {code: wanted[code] - size for code, size in stream.sizes.items() if wanted.get(code, 0) > size}
    sizes = {code: size + padded.get(code, 0) for code, size in stream.sizes.items()}
    pieces = [bytes([PAYLOADS, 3 * len(sizes) + 1]), *(struct.pack(">BH", code, size) for code, size in sizes.items())]
    for code, start, end in stream.events:
        event = stream.data[start:end]
        if code == GAME_START:
            event = event[:1] + bytes(version) + event[4:]
        pieces.append(event + bytes(padded.get(code, 0)))
    return b"".join(pieces), padded


def _absent(stream: _Stream) -> tuple[str, ...]:
    """The optional post-frame sources newer than the version that gave the post-frames' size:
    those a padded stream would only hold as zeros."""
    size = stream.sizes.get(POST, 0)
    real = max((since for since, steps_size in PAYLOAD_SIZES[POST] if steps_size <= size), default=(0, 0, 0))
    return tuple(name for name in OPTIONAL_SOURCES if name != "items" and SOURCE_VERSIONS[name] > real[:2])


def _read_stream(data: bytes) -> _Stream:
    """The event stream of `.slp` bytes, up to its last complete event or its raw length."""
    if data[: len(HEADER)] != HEADER or len(data) < len(HEADER) + 4:
        raise SalvageError("not a Slippi replay: no raw element at the start")
    (length,) = struct.unpack_from(">I", data, len(HEADER))
    start = len(HEADER) + 4
    stream = data[start : start + length] if length else data[start:]
    if len(stream) < 2 or stream[0] != PAYLOADS or stream[1] % 3 != 1 or len(stream) < 1 + stream[1]:
        raise SalvageError("no readable Event Payloads event")
    table = stream[2 : 1 + stream[1]]
    sizes = {table[i]: int.from_bytes(table[i + 1 : i + 3], "big") for i in range(0, len(table), 3)}
    events = []
    position = 1 + stream[1]
    while position < len(stream) and stream[position] in sizes and position + 1 + sizes[stream[position]] <= len(stream):
        events.append((stream[position], position, position + 1 + sizes[stream[position]]))
        position = events[-1][2]
    if not events or events[0][0] != GAME_START or events[0][2] - events[0][1] < 4:
        raise SalvageError("no Game Start event")
    version = tuple(stream[events[0][1] + 1 : events[0][1] + 4])
    tail = data[start + (length or position) :]
    closed = length > 0 and len(stream) == length and data.endswith(b"}")
    return _Stream(stream, sizes, events, version, tail if tail[:1] in (b"U", b"}") else b"}", closed)


def _declared_version(data: bytes) -> tuple[int, ...]:
    """The version a replay's Game Start declares, read off the first bytes; () when they hold none."""
    start = len(HEADER) + 4
    if data[: len(HEADER)] != HEADER or len(data) < start + 2 or data[start] != PAYLOADS:
        return ()
    game_start = start + 1 + data[start + 1]
    return tuple(data[game_start + 1 : game_start + 4]) if data[game_start : game_start + 1] == bytes([GAME_START]) else ()


def _bookend_ends(stream: _Stream) -> list[tuple[int, int]]:
    """(frame id, end offset) of each Frame Bookend: where each complete frame ends."""
    return [(_frame_id(stream.data, start), end) for code, start, end in stream.events if code == BOOKEND]


def _post_frame_ends(stream: _Stream) -> list[tuple[int, int]]:
    """(frame id, end offset) of each frame whose characters all sent their post-frame."""
    complete, frame, pres, posts = [], None, set(), set()
    for code, start, end in stream.events:
        if code not in (PRE, POST):
            continue
        frame_id, character = _frame_id(stream.data, start), stream.data[start + 5 : start + 7]  # port, is follower
        if frame_id != frame:
            frame, pres, posts = frame_id, set(), set()
        (pres if code == PRE else posts).add(character)
        if code == POST and posts >= pres:
            complete.append((frame_id, end))
    return complete


def _frame_id(stream: bytes, start: int) -> int:
    """The frame id a frame event's payload starts with (int32 after the command byte)."""
    return struct.unpack_from(">i", stream, start + 1)[0]


def _container(raw: bytes, tail: bytes = b"}") -> bytes:
    """A `.slp` of an event stream with its raw length set, then `tail` (by default no metadata)."""
    return HEADER + struct.pack(">I", len(raw)) + raw + tail


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(v) for v in version)
