"""Replay reading: one peppi parse of a `.slp` file into raw per-player numpy fields.

This module owns everything that depends on peppi-py and the Slippi format: which Arrow field holds
what, rollback resolution (each frame id once, ascending, its last-sent version), the mapping of the
lower/higher occupied port to p0/p1, and the game metadata. It reads the raw Arrow struct, not
peppi's dataclass wrapper, which drops fields; every field is converted column-wise, never per frame.
Values stay in game units here; `encoding` turns them into columns.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field, replace

import numpy as np
import peppi_py._peppi as _peppi
import pyarrow as pa

from .errors import ReplayError
from .ids import end_method_from_peppi

# Where each raw field lives under a port's `leader` struct: nested struct names down to the raw
# field name. Optional fields are absent from old replays (versions as documented by peppi).
PLAYER_TREE: dict = {
    "post": {
        "percent": "percent",
        "position": {"x": "x", "y": "y"},
        "shield": "shield",
        "direction": "direction",
        "state": "action",
        "character": "character",
        "stocks": "stocks",
        "last_attack_landed": "last_attack_landed",
        "combo_count": "combo_count",
        "state_age": "state_age",  # replay >= 0.2
        "state_flags": "state_flags",  # >= 2.0, a struct of 5 bytes
        "misc_as": "misc_as",  # >= 2.0
        "airborne": "airborne",  # >= 2.0
        "ground": "ground",  # >= 2.0
        "jumps": "jumps_left",  # >= 2.0
        "l_cancel": "l_cancel",  # >= 2.0
        "hurtbox_state": "hurtbox_state",  # >= 2.1
        "velocities": {  # >= 3.5
            "self_x_air": "speed_air_x",
            "self_y": "speed_y",
            "self_x_ground": "speed_ground_x",
            "knockback_x": "speed_attack_x",
            "knockback_y": "speed_attack_y",
        },
        "hitlag": "hitlag",  # >= 3.8
    },
    "pre": {
        "joystick": {"x": "main_x", "y": "main_y"},
        "cstick": {"x": "c_x", "y": "c_y"},
        "triggers": "shoulder",
        "buttons": "buttons",
    },
}

# The replay version that added each optional source (Slippi's replay spec).
SOURCE_VERSIONS = {
    "state_age": (0, 2),
    "state_flags": (2, 0),
    "misc_as": (2, 0),
    "airborne": (2, 0),
    "ground": (2, 0),
    "jumps": (2, 0),
    "l_cancel": (2, 0),
    "hurtbox_state": (2, 1),
    "velocities": (3, 5),
    "hitlag": (3, 8),
    "items": (3, 0),
}

# Source fields whose absence is recorded per game (named as in the replay), in bit order of the
# store's `fields_missing` mask. `items` is the frame-level item list (replay >= 3.0).
OPTIONAL_SOURCES = (
    "state_age",
    "state_flags",
    "misc_as",
    "airborne",
    "ground",
    "jumps",
    "l_cancel",
    "hurtbox_state",
    "velocities",
    "hitlag",
    "items",
)


@dataclass
class GameInfo:
    """Game-level metadata of one replay."""

    slippi_version: str
    stage: int
    is_pal: bool
    end_method: int  # ids.END_METHODS id, -1 when the replay has no end event
    ports: tuple[int, int]  # 1-based ports of p0 (lower) and p1 (higher)
    characters: tuple[int, int]  # internal character ids at the first frame
    player_types: tuple[str, str]  # "Human", "Cpu", ...
    frames: int  # frames kept: unique frame ids
    rollback_frames_dropped: int  # re-sent frame versions removed
    first_frame: int  # frame id of the first kept frame (-123: countdown)
    fields_missing: tuple[str, ...]  # OPTIONAL_SOURCES this replay lacks
    start_time: str = ""
    match_id: str = ""  # the same for both players' replays of one game (see match_identity); "" if none
    salvaged: str = ""  # what was repaired to read the replay (see salvage); "" when it was whole


@dataclass
class ItemFrames:
    """Items of every kept frame, flattened: item i belongs to frame `frame[i]`."""

    frame: np.ndarray  # (n_items,) int64, index into the kept frames
    x: np.ndarray  # (n_items,) float32
    y: np.ndarray  # (n_items,) float32


@dataclass
class RawGame:
    """One parsed 1v1 game: per-player raw fields, each an array over the kept frames."""

    info: GameInfo
    players: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # field -> (frames,); state_flags (5, frames)
    items: ItemFrames | None = None
    frame_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))


def read_replay(path: str, items: bool = True) -> RawGame:
    """Parse a `.slp` file with peppi and resolve it into a 1v1 `RawGame` (with its items if asked).

    Raises `ReplayError` with a one-line reason when peppi cannot parse the file or the game is not
    a two-port game.
    """
    try:
        game = _peppi.read_slippi(str(path), False)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # peppi's Rust panics are not Exceptions
        raise ReplayError(f"unreadable replay: {one_line(error)}") from None
    return resolve_game(game, items)


def resolve_game(game, items: bool = True) -> RawGame:
    """Turn peppi's raw parse (`_peppi.read_slippi`) into a `RawGame` (items only if asked)."""
    start = game.start
    frames: pa.StructArray = game.frames
    if frames is None or len(frames) == 0:
        raise ReplayError("replay has no frames")
    ports_struct = frames.field("ports")
    port_names = sorted(ports_struct.type.field(i).name for i in range(ports_struct.type.num_fields))
    if len(port_names) != 2:
        raise ReplayError(f"not a 1v1 game: {len(port_names)} players")

    frame_ids = frames.field("id").to_numpy()
    keep = last_versions(frame_ids)
    n_kept = len(frame_ids) if keep is None else len(keep)
    leaders = [ports_struct.field(name).field("leader") for name in port_names]
    players = tuple(_player_fields(leader, keep) for leader in leaders)
    missing = _missing_sources(leaders[0].type, frames.type)

    by_port = {p["port"]: p for p in start.get("players", [])}
    version = start.get("slippi", {}).get("version", [0, 0, 0])
    info = GameInfo(
        slippi_version=".".join(str(v) for v in version),
        stage=int(start.get("stage", 0)),
        is_pal=bool(start.get("is_pal") or False),
        end_method=end_method_from_peppi((game.end or {}).get("method")),
        ports=tuple(int(name[1:]) for name in port_names),
        characters=tuple(int(p["character"][0]) for p in players),
        player_types=tuple(str(by_port.get(name, {}).get("type", "")) for name in port_names),
        frames=n_kept,
        rollback_frames_dropped=len(frame_ids) - n_kept,
        first_frame=int(frame_ids.min()),
        fields_missing=missing,
        start_time=str((game.metadata or {}).get("startAt", "")),
        match_id=match_identity(start),
    )
    kept_ids = frame_ids if keep is None else frame_ids[keep]
    item_frames = _items(frames, keep) if items and "items" not in missing else None
    return RawGame(info=info, players=players, items=item_frames, frame_ids=kept_ids)


def match_identity(start: dict) -> str:
    """A key that both players' replays of one game share and other games do not; "" if none.

    Both players of a netplay game may upload their own recording of it; the files differ in bytes
    (metadata, rollback re-sends, timestamps from each machine's clock), so the content hash tells
    them apart. What the game start holds is the same on both sides, as the game must be:
    - Slippi >= 3.14 online games carry the matchmaking server's match id (one per set, e.g.
      "mode.ranked-2025-02-24T00:51:18.31-0") and the game's number and tiebreaker in that set:
      made to identify the game across both recordings.
    - Older replays have none. There the key is the game's random seed at game start, which both
      netplay clients must share for the game to stay in sync (the netplay replays with connect
      codes here hold seeds below 65,536, console ones 32-bit values), with the stage and each
      player's character (character-select id) and connect code, sorted so that port order does
      not matter.
    A key shared by two different games (two games of the same players, characters and stage with
    the same 16-bit seed) only puts both on the same side of a split; two recordings of one game
    with different keys would leak across it, so the key uses no per-machine field (start time,
    console name, display names). Empty when the game start has no seed.
    """
    match = start.get("match") or {}
    if match.get("id"):
        return f"{match['id']} game {match.get('game', 0)}.{match.get('tiebreaker', 0)}"
    seed = start.get("random_seed")
    if not seed:
        return ""
    players = sorted(f"{_code(p) or '-'}/{p.get('character')}" for p in start.get("players", []))
    return f"seed {seed} stage {start.get('stage', 0)} {' '.join(players)}"


def _code(player: dict) -> str:
    """A player's connect code as Slippi shows it ("ABCD#123"; the replay has a full-width #)."""
    return unicodedata.normalize("NFKC", str((player.get("netplay") or {}).get("code") or ""))


def drop_sources(raw: RawGame, sources: tuple[str, ...], version: str = "") -> RawGame:
    """`raw` without some optional sources (dropped and recorded missing), relabelled `version` if
    given: for a replay whose bytes were zero-padded so that peppi reads them (see `salvage`)."""
    dropped = {key for name in sources if name != "items" for key in _raw_names(PLAYER_TREE["post"][name])}
    players = tuple({k: v for k, v in fields.items() if k not in dropped} for fields in raw.players)
    missing = tuple(name for name in OPTIONAL_SOURCES if name in raw.info.fields_missing or name in sources)
    info = replace(raw.info, slippi_version=version or raw.info.slippi_version, fields_missing=missing)
    return RawGame(info, players, None if "items" in sources else raw.items, raw.frame_ids)


def _raw_names(target) -> list[str]:
    """The raw field names under one PLAYER_TREE entry."""
    return [name for sub in target.values() for name in _raw_names(sub)] if isinstance(target, dict) else [target]


def last_versions(frame_ids: np.ndarray) -> np.ndarray | None:
    """Row indices keeping each frame id once, ascending, from its last-sent version.

    Returns None when the ids are already strictly increasing (no rollback), so callers can skip the
    gather. Netplay replays re-send frames, appending each version in the order received; the last
    one is the finalized frame.
    """
    if len(frame_ids) < 2 or bool(np.all(frame_ids[1:] > frame_ids[:-1])):
        return None
    reversed_ids = frame_ids[::-1]
    _, first_in_reversed = np.unique(reversed_ids, return_index=True)  # sorted by id
    return (len(frame_ids) - 1 - first_in_reversed).astype(np.int64)


def _player_fields(leader: pa.StructArray, keep: np.ndarray | None) -> dict[str, np.ndarray]:
    fields: dict[str, np.ndarray] = {}
    _collect(leader, _walk_plan(leader.type), fields)
    if keep is not None:
        fields = {name: values[..., keep] for name, values in fields.items()}
    if leader.null_count:
        _zero_null_rows(fields, leader, keep)
    return fields


def _collect(struct: pa.StructArray, plan: tuple, out: dict[str, np.ndarray]) -> None:
    """Convert the fields of a walk plan to numpy, visiting each struct once."""
    for index, target in plan:
        child = struct.field(index)
        if isinstance(target, tuple):
            _collect(child, target, out)
        elif target == "state_flags":
            out[target] = np.stack([_to_numpy(child.field(b)) for b in range(5)])  # (5, frames) uint8
        else:
            out[target] = _to_numpy(child)


_walk_plans: dict[tuple, tuple] = {}


def _walk_plan(leader_type: pa.DataType) -> tuple:
    """(child index, raw name or sub-plan) for the PLAYER_TREE fields a leader struct has.

    Replays of one Slippi version share a layout, so it is worked out once per set of field names
    (hashing the Arrow type itself costs ~50 us).
    """
    key = _field_names(leader_type)
    if key not in _walk_plans:
        _walk_plans[key] = _plan_for(leader_type, _TREE_ITEMS)
    return _walk_plans[key]


def _field_names(leader_type: pa.DataType) -> tuple:
    return tuple(
        tuple(sub.field(i).name for i in range(sub.num_fields))
        for sub in (leader_type.field(j).type for j in range(leader_type.num_fields))
    )


def _plan_for(struct_type: pa.DataType, tree: tuple) -> tuple:
    plan = []
    for key, target in tree:
        index = struct_type.get_field_index(key)
        if index >= 0:
            sub = _plan_for(struct_type.field(index).type, target) if isinstance(target, tuple) else target
            plan.append((index, sub))
    return tuple(plan)


def _tree_items(tree: dict) -> tuple:
    return tuple((k, _tree_items(v) if isinstance(v, dict) else v) for k, v in tree.items())


_TREE_ITEMS = _tree_items(PLAYER_TREE)


def _to_numpy(array: pa.Array) -> np.ndarray:
    # peppi declares every leaf non-null; only a whole player row can be null (see _zero_null_rows).
    return array.to_numpy(zero_copy_only=False)


def _zero_null_rows(fields: dict[str, np.ndarray], leader: pa.StructArray, keep: np.ndarray | None) -> None:
    """Frames where peppi has no data for a player hold zeros, not leftovers."""
    null = ~leader.is_valid().to_numpy(zero_copy_only=False)
    if keep is not None:
        null = null[keep]
    for name, values in fields.items():
        fields[name] = np.where(null, 0, values).astype(values.dtype)  # broadcasts over state_flags' bytes


def _missing_sources(leader_type: pa.DataType, frames_type: pa.DataType) -> tuple[str, ...]:
    post = leader_type.field("post").type
    present = {post.field(i).name for i in range(post.num_fields)}
    if frames_type.get_field_index("item") >= 0:
        present.add("items")
    return tuple(name for name in OPTIONAL_SOURCES if name not in present)


def _items(frames: pa.StructArray, keep: np.ndarray | None) -> ItemFrames:
    item_lists = frames.field("item")
    offsets = item_lists.offsets.to_numpy()
    values = item_lists.values
    x = _to_numpy(values.field("position").field("x"))
    y = _to_numpy(values.field("position").field("y"))
    starts, counts = offsets[:-1], np.diff(offsets)
    if keep is not None:
        starts, counts = starts[keep], counts[keep]
    frame = np.repeat(np.arange(len(counts)), counts)  # (n_items,)
    within = np.arange(len(frame)) - np.repeat(np.cumsum(counts) - counts, counts)
    rows = starts[frame] + within
    return ItemFrames(frame=frame, x=x[rows], y=y[rows])


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")
