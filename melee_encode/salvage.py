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

import numpy as np

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
    """A replay's event stream: the Event Payloads table and the complete events after it.

    The events are three arrays of one row per complete event, in order: a long replay holds
    hundreds of thousands, which numpy reads at a fraction of the cost of Python tuples.
    """

    data: bytes  # the stream's bytes as found (possibly cut short)
    sizes: dict[int, int]  # command byte -> payload size
    codes: np.ndarray  # (events,) uint8: each event's command byte
    starts: np.ndarray  # (events,) int64: offset of each event's command byte
    ends: np.ndarray  # (events,) int64: offset just past each event's payload
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
    game_end = stream.ends[stream.codes == GAME_END]
    if len(game_end) and stream.closed:
        raise SalvageError("not truncated: the stream has its Game End and the file is closed")
    if len(game_end):
        return Repair(
            _container(stream.data[: game_end[0]]), "cut_truncated", "truncated after Game End: metadata dropped, every frame kept"
        )
    has_bookends = stream.version >= (3, 0, 0) and BOOKEND in stream.sizes
    frames, ends = _bookend_ends(stream) if has_bookends else _post_frame_ends(stream)
    if not len(ends):
        raise SalvageError("truncated before the first complete frame")
    starts = stream.starts[np.isin(stream.codes, FRAME_EVENTS)]
    last = int(stream.ends[-1])
    if last + 5 <= len(stream.data) and stream.data[last] in FRAME_EVENTS:
        starts = np.append(starts, last)  # the event cut short: its frame id was sent
    last_sent = int(_frame_ids(stream.data, starts).max())
    return Repair(_container(stream.data[: ends[-1]]), "cut_truncated", f"truncated: cut after frame {frames[-1]} of {last_sent} sent")


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
    table = b"".join([bytes([PAYLOADS, 3 * len(sizes) + 1]), *(struct.pack(">BH", code, size) for code, size in sizes.items())])
    extra = np.zeros(256, np.int64)
    extra[list(padded)] = list(padded.values())
    lengths = stream.ends - stream.starts
    moved = np.concatenate([[0], np.cumsum(lengths + extra[stream.codes])])  # (events + 1,) where each event lands
    out = np.zeros(int(moved[-1]), np.uint8)
    shift = np.repeat(moved[:-1] - stream.starts, lengths)  # (event bytes,) how far each byte moves
    source = np.arange(stream.starts[0], stream.ends[-1])  # (event bytes,) the walk found the events back to back
    out[source + shift] = np.frombuffer(stream.data, np.uint8)[source]
    out[1:4] = version  # in the Game Start, the first event (_read_stream checks it)
    return table + out.tobytes(), padded


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
    lengths = np.zeros(256, np.int64)  # command byte -> event length; 0 for a byte that starts no event
    lengths[list(sizes)] = [1 + size for size in sizes.values()]
    starts, position = _walk(stream, lengths.tolist(), 1 + stream[1])
    codes = np.frombuffer(stream, np.uint8)[starts]
    ends = starts + lengths[codes]
    if not len(starts) or codes[0] != GAME_START or ends[0] - starts[0] < 4:
        raise SalvageError("no Game Start event")
    version = tuple(stream[starts[0] + 1 : starts[0] + 4])
    tail = data[start + (length or position) :]
    closed = length > 0 and len(stream) == length and data.endswith(b"}")
    return _Stream(stream, sizes, codes, starts, ends, version, tail if tail[:1] in (b"U", b"}") else b"}", closed)


def _walk(stream: bytes, lengths: list[int], position: int) -> tuple[np.ndarray, int]:
    """The start offsets of the complete events from `position` on, and where the walk stopped;
    lengths[command byte] is an event's length, 0 for a byte that starts none.

    Each event's start follows from the one before it, so this stays a Python loop: kept to a
    list look-up and an append per event."""
    starts, end = [], len(stream)
    while position < end:
        length = lengths[stream[position]]
        if not length or position + length > end:
            break
        starts.append(position)
        position += length
    return np.array(starts, np.int64), position


def _declared_version(data: bytes) -> tuple[int, ...]:
    """The version a replay's Game Start declares, read off the first bytes; () when they hold none."""
    start = len(HEADER) + 4
    if data[: len(HEADER)] != HEADER or len(data) < start + 2 or data[start] != PAYLOADS:
        return ()
    game_start = start + 1 + data[start + 1]
    return tuple(data[game_start + 1 : game_start + 4]) if data[game_start : game_start + 1] == bytes([GAME_START]) else ()


def _bookend_ends(stream: _Stream) -> tuple[np.ndarray, np.ndarray]:
    """(frame ids, end offsets) of the Frame Bookends: where each complete frame ends."""
    bookends = stream.codes == BOOKEND
    return _frame_ids(stream.data, stream.starts[bookends]), stream.ends[bookends]


def _post_frame_ends(stream: _Stream) -> tuple[np.ndarray, np.ndarray]:
    """(frame ids, end offsets) of the post-frames after which every character that sent a
    pre-frame of their frame has sent its post-frame: where each complete frame ends."""
    frame_events = np.isin(stream.codes, (PRE, POST))
    codes, starts, ends = stream.codes[frame_events], stream.starts[frame_events], stream.ends[frame_events]
    frames = _frame_ids(stream.data, starts)
    data = np.frombuffer(stream.data, np.uint8)
    _, character = np.unique(data[starts + 5].astype(np.int64) * 256 + data[starts + 6], return_inverse=True)  # port, is follower
    first = np.flatnonzero(np.concatenate([[True], frames[1:] != frames[:-1]]))  # where each frame's run of events starts
    run = np.repeat(first, np.diff(np.append(first, len(frames))))  # (events,) the start of each event's run
    complete = codes == POST
    for one in range(character.max(initial=-1) + 1):  # a replay has 2 to 8 characters
        pre = _seen_in_run((codes == PRE) & (character == one), run)
        post = _seen_in_run((codes == POST) & (character == one), run)
        complete &= post | ~pre
    return frames[complete], ends[complete]


def _seen_in_run(sent: np.ndarray, run: np.ndarray) -> np.ndarray:
    """(events,) bool: whether `sent` held at this event or an earlier one of its run (`run`: the
    index each event's run starts at)."""
    count = sent.cumsum()  # (events,)
    return count > count[run] - sent[run]


def _frame_ids(stream: bytes, starts: np.ndarray) -> np.ndarray:
    """(events,) int64: the frame id each frame event's payload starts with (big-endian int32)."""
    data = np.frombuffer(stream, np.uint8)
    return data[starts[:, None] + np.arange(1, 5)].view(">i4").ravel().astype(np.int64)


def _container(raw: bytes, tail: bytes = b"}") -> bytes:
    """A `.slp` of an event stream with its raw length set, then `tail` (by default no metadata)."""
    return HEADER + struct.pack(">I", len(raw)) + raw + tail


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(v) for v in version)
