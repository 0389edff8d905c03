"""Salvage on real replays: truncated replays cut at their last complete frame, 3.0-3.6 replays read
as 3.7, what is never salvaged, the table columns, and the whole corpus (slow)."""

import csv
import gzip
import re
import struct

import numpy as np
import pytest

from melee_encode import EncodeOptions, GameFilter, encode, open_store
from melee_encode.errors import ReplayError
from melee_encode.replay import read_replay
from melee_encode.salvage import read_salvaging
from melee_encode.sources import ReplaySource

from conftest import CORPUS, TRUNCATED, corpus, replay

HEADER = 15  # b"{U\x03raw[$U#l" and the raw length
CUT = re.compile(r"^truncated: cut after frame (-?\d+) of (-?\d+) sent$")
EMPTY_STRUCT = "A StructArray must contain at least one field"
PANICKING = {  # the corpus's 3.0-3.6 replays, on which peppi-py 0.8.6 panics
    "vinceau__project-clippi__slp__200306_2258_Falco_v_Fox_PS.slp.gz": "3.3.0",
    "ipowell__slippi-parse__resources__test.slp.gz": "3.6.0",
}


def plain(path: str, folder) -> tuple[str, bytes]:
    """A `.slp` path peppi can parse for a replay (a `.slp.gz` is written out to `folder`), and its bytes."""
    data = open(path, "rb").read()
    if not path.endswith(".gz"):
        return path, data
    data = gzip.decompress(data)
    (folder / "replay.slp").write_bytes(data)
    return str(folder / "replay.slp"), data


def salvaged(data: bytes):
    """The game `read_salvaging` makes of `.slp` bytes held in memory."""
    return read_salvaging(ReplaySource(name="cut.slp", path="cut.slp", data=data), data)


def cut(data: bytes, stream_bytes: int) -> bytes:
    """The first `stream_bytes` of a replay's event stream, its raw length 0: what a crash leaves."""
    return data[:11] + bytes(4) + data[HEADER : HEADER + stream_bytes]


def events(data: bytes) -> list[tuple[int, int, bytes]]:
    """(command, offset in the stream, payload) of each event of a whole replay, per Slippi's spec."""
    (length,) = struct.unpack_from(">I", data, 11)
    stream = data[HEADER : HEADER + length]
    table = stream[2 : 1 + stream[1]]
    sizes = {table[i]: int.from_bytes(table[i + 1 : i + 3], "big") for i in range(0, len(table), 3)}
    found, at = [], 1 + stream[1]
    while at < len(stream):
        found.append((stream[at], at, stream[at + 1 : at + 1 + sizes[stream[at]]]))
        at += 1 + sizes[stream[at]]
    return found


def assert_same_frames(game, whole, last_id: int) -> None:
    """`game` holds exactly the frames of `whole` up to `last_id`, every field equal."""
    keep = whole.frame_ids <= last_id
    assert np.array_equal(game.frame_ids, whole.frame_ids[keep])
    for p in (0, 1):
        assert game.players[p].keys() == whole.players[p].keys()
        for name, values in whole.players[p].items():
            assert np.array_equal(game.players[p][name], values[..., keep]), name


@pytest.mark.parametrize(
    "path",
    [
        replay("peppi/v0.1.slp"),  # 0.1.0: no frame start, no bookend
        replay("slippi-js/sheik_vs_ics_yoshis.slp"),  # 0.1.0 with Ice Climbers: Nana's events too
        replay("peppi/v2.0.slp"),  # 2.0.1
        corpus("pcrain__slippc__test-replays__standard__2-2-0-singles-irl-bighouse9.slp.gz"),  # 2.2: frame start, no bookend
        replay("peppi/items.slp"),  # 3.7: bookends and items
    ],
)
def test_a_replay_cut_short_keeps_exactly_its_complete_frames(path, tmp_path):
    path, data = plain(path, tmp_path)
    whole = read_replay(path)
    stream = events(data)
    game_end = stream[-1][1]
    assert stream[-1][0] == 0x39

    last = int(whole.frame_ids[-1])
    every = salvaged(cut(data, game_end))  # all but the Game End: every frame is complete
    assert every.info.salvaged == f"truncated: cut after frame {last} of {last} sent"
    assert_same_frames(every, whole, last)
    short = salvaged(cut(data, game_end - 1))  # the last frame's last event cut by a byte
    assert short.info.salvaged == f"truncated: cut after frame {last - 1} of {last} sent"
    assert_same_frames(short, whole, last - 1)

    for fraction in (0.31, 0.58, 0.83):
        game = salvaged(cut(data, int(game_end * fraction)))
        kept, sent = map(int, CUT.match(game.info.salvaged).groups())
        assert kept in (sent, sent - 1)
        assert_same_frames(game, whole, kept)
        assert game.info.end_method == -1 and game.info.slippi_version == whole.info.slippi_version


def test_a_netplay_replay_cut_short_resolves_rollback_within_what_is_left():
    data = open(replay("peppi/ics2.slp"), "rb").read()
    whole = read_replay(replay("peppi/ics2.slp"))
    assert whole.info.rollback_frames_dropped > 0
    game = salvaged(cut(data, len(data) // 2))
    kept, _ = map(int, CUT.match(game.info.salvaged).groups())
    assert np.array_equal(game.frame_ids, np.arange(-123, kept + 1))
    settled = whole.frame_ids <= kept - 10  # re-sends reach back < 10 frames: earlier ones are final
    for p in (0, 1):
        assert np.array_equal(game.players[p]["x"][: settled.sum()], whole.players[p]["x"][settled])


def test_truncated_after_the_game_end_keeps_every_frame_and_drops_the_metadata():
    data = open(replay("peppi/items.slp"), "rb").read()
    whole = read_replay(replay("peppi/items.slp"))
    (length,) = struct.unpack_from(">I", data, 11)
    game = salvaged(data[: HEADER + length + 20])  # inside the metadata element
    assert game.info.salvaged == "truncated after Game End: metadata dropped, every frame kept"
    assert_same_frames(game, whole, int(whole.frame_ids[-1]))
    assert game.info.end_method == whole.info.end_method and game.info.start_time == "" != whole.info.start_time


@pytest.mark.parametrize("name", TRUNCATED)
def test_the_shared_truncated_replay_is_salvaged(name):
    game = salvaged(open(replay(name), "rb").read())
    assert CUT.match(game.info.salvaged) and game.info.frames > 7000


def test_what_cannot_be_salvaged_says_why():
    corrupt = open(replay("peppi/corrupt.slp"), "rb").read()  # cut inside its gecko codes
    with pytest.raises(
        ReplayError,
        match=r"^unreadable replay: OSError: I/O error: failed to fill whole buffer \(not salvaged: truncated before the first complete frame\)$",
    ):
        salvaged(corrupt)
    data = open(replay("peppi/items.slp"), "rb").read()
    with pytest.raises(ReplayError, match=r"\(not salvaged: no Game Start event\)$"):
        salvaged(cut(data, 200))
    with pytest.raises(ReplayError, match=r"\(not salvaged: not truncated: the stream has its Game End and the file is closed\)$"):
        salvaged(open(replay("slippi-js/FodPlatforms.slp"), "rb").read())  # a development build's replay
    doubles = open(replay("peppi/crazy_name_tags.slp"), "rb").read()
    with pytest.raises(ReplayError, match=r"^not a 1v1 game: 4 players \(after salvage: truncated: cut after frame -?\d+ of -?\d+ sent\)$"):
        salvaged(cut(doubles, len(doubles) // 2))


def test_whole_replays_and_other_errors_are_left_alone():
    path = replay("peppi/ics2.slp")
    game = read_salvaging(ReplaySource(name=path, path=path), open(path, "rb").read())
    assert game.info.salvaged == "" and game.info == read_replay(path).info
    four = replay("peppi/crazy_name_tags.slp")
    with pytest.raises(ReplayError, match=r"^not a 1v1 game: 4 players$"):
        read_salvaging(ReplaySource(name=four, path=four), open(four, "rb").read())
    corrupt = gzip.decompress(open(corpus("jimlah42__slippi-dashboard__src__tests__test-replays__base_game.slp.gz"), "rb").read())
    with pytest.raises(ReplayError, match=r"^unreadable replay: OSError: invalid data: unknown event: 0x0$"):
        salvaged(corrupt)  # bytes damaged mid-stream, not cut short: not salvaged


@pytest.mark.parametrize("name, version", sorted(PANICKING.items()))
def test_replays_3_0_to_3_6_are_read_as_3_7(name, version, tmp_path, capfd):
    path, data = plain(corpus(name), tmp_path)
    with pytest.raises(ReplayError, match=EMPTY_STRUCT):
        read_replay(path)
    capfd.readouterr()
    game = salvaged(data)
    assert "panicked" not in capfd.readouterr().err  # repaired before peppi sees it: no Rust backtrace
    assert game.info.salvaged == f"version {version} read as 3.7.0 (peppi-py 0.8.6 panics on 3.0-3.6)"
    assert game.info.slippi_version == version and game.info.end_method == 2
    has_velocities = tuple(map(int, version.split("."))) >= (3, 5)
    assert ("velocities" in game.info.fields_missing) is not has_velocities
    assert ("speed_air_x" in game.players[0]) is has_velocities and "hitlag" not in game.players[0]

    # Every post-frame value against the bytes at the spec's offsets, each frame's last version.
    posts = [payload for code, _, payload in events(data) if code == 0x38 and payload[5] == 0]  # leaders
    ports = sorted({payload[4] for payload in posts})
    assert game.info.ports == tuple(p + 1 for p in ports)
    for p, port in enumerate(ports):
        last = {struct.unpack_from(">i", payload)[0]: payload for payload in posts if payload[4] == port}
        assert np.array_equal(game.frame_ids, sorted(last))
        expect = {"action": (">H", 7), "x": (">f", 9), "y": (">f", 13), "percent": (">f", 21)}
        if has_velocities:
            expect["speed_air_x"] = (">f", 52)
        for field, (kind, offset) in expect.items():
            values = np.array([struct.unpack_from(kind, last[i], offset)[0] for i in sorted(last)])
            assert np.array_equal(game.players[p][field], values.astype(game.players[p][field].dtype)), field


def test_the_table_records_salvage_and_match_identity(tmp_path):
    inputs = [
        replay("peppi/ics2.slp"),
        replay(TRUNCATED[0]),
        corpus(next(iter(PANICKING))),
        corpus("cbartsch__Slippipedia__replays__fox-pika-crashing.slp.gz"),
    ]
    path = str(tmp_path / "s.zarr")
    encode(inputs, path, EncodeOptions(progress=False, filters=GameFilter(min_frames=200)))
    store = open_store(path)
    rows = {r["source"]: r for r in store.game_rows()}
    assert rows[inputs[0]]["salvaged"] == "" and rows[inputs[0]]["match_id"] == "seed 24473 stage 28 XX#111/14 YYYY#222/20"
    assert CUT.match(rows[inputs[1]]["salvaged"]) and rows[inputs[2]]["salvaged"].startswith("version 3.3.0 read as 3.7.0")
    for i in range(len(store)):
        assert store.game(i).info.salvaged == store.games["salvaged"][i]
    [skip] = store.skipped  # 142 frames salvaged, fewer than asked
    assert skip.reason == "filtered: too short: 142 frames < 200 (truncated: cut after frame 18 of 18 sent)"


@pytest.mark.slow
def test_the_whole_corpus(tmp_path):
    """Every row of the corpus's MANIFEST.tsv ends as it says: ok 1v1 games encode with their frame
    count, panicking and truncated ones are salvaged, the rest are skipped with their reason."""
    with open(CORPUS / "MANIFEST.tsv", newline="") as handle:
        manifest = {row["file"]: row for row in csv.DictReader(handle, delimiter="\t")}
    path = str(tmp_path / "corpus.zarr")
    summary = encode([str(CORPUS)], path, EncodeOptions(progress=False))
    store = open_store(path)
    games = {r["source"].rsplit("/", 1)[1]: r for r in store.game_rows()}
    skipped = {s.source.rsplit("/", 1)[1]: s.reason for s in store.skipped}
    assert len(games) + len(skipped) == len(manifest)

    whole = {f: r for f, r in manifest.items() if r["ok"] == "ok" and r["ports"] == "2"}
    panicking = {f for f, r in manifest.items() if EMPTY_STRUCT in r["ok"]}
    truncated = {f for f, r in manifest.items() if "failed to fill whole buffer" in r["ok"]}
    assert panicking == set(PANICKING)
    assert set(games) == set(whole) | panicking | truncated
    for name, row in whole.items():
        assert games[name]["frames"] == int(row["unique_frame_ids"]) and games[name]["salvaged"] == ""
        assert games[name]["slippi_version"] == row["version"] and games[name]["stage"] == int(row["stage"])
    assert all(games[f]["salvaged"].startswith("version") for f in panicking)
    assert all(CUT.match(games[f]["salvaged"]) for f in truncated)
    for name, reason in skipped.items():
        row = manifest[name]
        expected = (
            f"not a 1v1 game: {row['ports']} players" if row["ok"] == "ok" else f"unreadable replay: OSError: {row['ok'][len('error: ') :]}"
        )
        assert reason == expected, name
    ids = [r["match_id"] for r in games.values()]
    assert all(ids) and len(set(ids)) == len(ids)  # an identity for every game; no two share one here
    assert summary.games == len(games)
