"""The Zarr store: round trip, plain-zarr readability, chunk-local reads, skips, filters, writer lock."""

import glob
import os

import numpy as np
import pytest
import zarr

from melee_encode import EncodeOptions, EncodingConfig, GameFilter, StoreError, encode, encode_game, encode_replay, open_store
from melee_encode.salvage import read_salvaging
from melee_encode.sources import ReplaySource
from melee_encode.writer import StoreWriter

from conftest import NOT_1V1, SHARED_GAMES, TRUNCATED, UNREADABLE, replay


def _by_source(store):
    return {os.path.relpath(s, store_root_dir()): i for i, s in enumerate(store.games["source"])}


def store_root_dir():
    from conftest import REPLAYS

    return str(REPLAYS)


def test_round_trip_equals_the_in_memory_encoding(shared_store):
    store = open_store(shared_store)
    assert len(store) == SHARED_GAMES
    for name, index in _by_source(store).items():
        if name in TRUNCATED:  # salvaged by the encoder, not by encode_replay
            expected = encode_game(read_salvaging(ReplaySource(name, replay(name)), open(replay(name), "rb").read()))
        else:
            expected = encode_replay(replay(name))
        game = store.game(index)
        assert np.array_equal(game.floats, expected.floats), name
        assert np.array_equal(game.ints, expected.ints), name
        assert np.array_equal(game.state_age, expected.state_age), name
        assert game.info == expected.info, name


def test_frame_ranges(shared_store):
    store = open_store(shared_store)
    index = _by_source(store)["peppi/old_ver_thegang.slp"]
    whole = store.game(index)
    floats, ints, state_age = store.read_frames(index, 4000, 9100)  # crosses chunks of 4096 frames
    assert np.array_equal(floats, whole.floats[4000:9100])
    assert np.array_equal(ints, whole.ints[4000:9100])
    assert np.array_equal(state_age, whole.state_age[4000:9100])
    with pytest.raises(IndexError):
        store.read_frames(index, 10, 5)


def test_reading_a_game_touches_only_its_chunks(replays_dir, tmp_path):
    path = str(tmp_path / "s.zarr")
    encode([replays_dir], path, EncodeOptions(progress=False, chunk_frames=1024))
    store = open_store(path)
    index = _by_source(store)["peppi/ics2.slp"]
    offset, length = int(store.games["offset"][index]), int(store.games["length"][index])
    part = store.root["parts"][f"{int(store.games['part'][index]):08d}"]
    needed = set(range(offset // 1024, (offset + length - 1) // 1024 + 1))
    removed = 0
    for array in ("float", "int", "state_age"):
        for chunk in glob.glob(os.path.join(path, part.path, array, "c", "0", "*")):
            if int(os.path.basename(chunk)) not in needed:
                os.remove(chunk)
                removed += 1
    assert removed > 100
    game = open_store(path).game(index)
    assert np.array_equal(game.floats, encode_replay(replay("peppi/ics2.slp")).floats)


def test_readable_with_plain_zarr(shared_store):
    root = zarr.open_group(shared_store, mode="r")
    attrs = root.attrs["melee_encode"]
    n = attrs["games"]
    names = [c["name"] for c in attrs["schema"]["float_columns"]]
    assert n == SHARED_GAMES and len(names) == 138 and attrs["encoding"]["state_flags"] is True
    sources = root["games/source"][:n]
    i = int(np.flatnonzero([s.endswith("peppi/ics2.slp") for s in sources])[0])
    part, offset, length = (int(root[f"games/{c}"][i]) for c in ("part", "offset", "length"))
    floats = root[f"parts/{part:08d}/float"][:, offset : offset + length].T
    x = floats[:, names.index("p0.x")] / attrs["schema"]["float_columns"][names.index("p0.x")]["scale"]
    import peppi_py

    peppi_x = peppi_py.read_slippi(replay("peppi/ics2.slp")).frames.ports[0].leader.post.position.x.to_numpy()
    assert length == 9519 and np.allclose(x[:100], peppi_x[:100], rtol=1e-6)


def test_every_failing_replay_is_skipped_with_its_reason(shared_store):
    skipped = {os.path.relpath(s.source, store_root_dir()): s.reason for s in open_store(shared_store).skipped}
    assert len(skipped) == len(UNREADABLE) + len(NOT_1V1)
    peppi_says = "unreadable replay: OSError: I/O error: failed to fill whole buffer"
    assert skipped["peppi/corrupt.slp"] == f"{peppi_says} (not salvaged: truncated before the first complete frame)"
    assert (
        skipped["slippi-js/FodPlatforms.slp"]
        == f"{peppi_says} (not salvaged: not truncated: the stream has its Game End and the file is closed)"
    )
    for name, players in NOT_1V1.items():
        assert skipped[name] == f"not a 1v1 game: {players} players"


def test_metadata_table(shared_store):
    store = open_store(shared_store)
    rows = {os.path.relpath(r["source"], store_root_dir()): r for r in store.game_rows()}
    dup = rows["peppi/duplicate_game_end.slp"]
    assert (dup["frames"], dup["rollback_frames_dropped"], dup["stage"], dup["end_method"]) == (5023, 1494, 8, 2)
    assert dup["characters"] == [22, 22] and dup["ports"] == [1, 2] and dup["slippi_version"] == "3.15.0"
    assert rows["peppi/nintendont.slp"]["ports"] == [2, 4]
    assert rows["peppi/v2.0.slp"]["fields_missing"] == ["hurtbox_state", "velocities", "hitlag", "items"]
    assert rows["slippi-js/pal.slp"]["is_pal"] is True
    assert len({r["hash"] for r in rows.values()}) == SHARED_GAMES


def test_filters(replays_dir, tmp_path):
    path = str(tmp_path / "game_only.zarr")
    encode([replays_dir], path, EncodeOptions(progress=False, filters=GameFilter(end_methods=(2,), min_frames=200)))
    store = open_store(path)
    assert len(store) == 4 and set(store.games["end_method"].tolist()) == {2}
    assert min(store.games["length"]) >= 200
    reasons = [s.reason for s in store.skipped]
    assert "filtered: too short: 148 frames < 200" in reasons  # v3.13.slp, ended by GAME
    assert any(r.startswith("filtered: end method 7 not in [2]") for r in reasons)

    path = str(tmp_path / "fd_fox.zarr")
    encode([replays_dir], path, EncodeOptions(progress=False, filters=GameFilter(stages=(32,), characters=(1,))))
    store = open_store(path)
    assert len(store) == 4 and set(store.games["stage"].tolist()) == {32}
    assert all(1 in c for c in store.games["characters"].tolist())


def test_max_games_takes_the_first_games_and_resumes_to_the_new_limit(replays_dir, shared_store, tmp_path):
    path = str(tmp_path / "first.zarr")
    in_order = open_store(shared_store).games["source"].tolist()
    encode([replays_dir], path, EncodeOptions(progress=False, max_games=5))
    assert open_store(path).games["source"].tolist() == in_order[:5]
    encode([replays_dir], path, EncodeOptions(progress=False, max_games=12, workers=2))
    assert sorted(open_store(path).games["source"].tolist()) == sorted(in_order[:12])  # helpers commit out of order


def test_a_second_writer_is_refused(tmp_path):
    path = str(tmp_path / "locked.zarr")
    with StoreWriter(path):
        with pytest.raises(StoreError, match="is being written by .*refusing a second writer"):
            StoreWriter(path)
    StoreWriter(path).close()  # released


def test_another_encoding_on_the_same_store_is_refused(tmp_path):
    path = str(tmp_path / "v3.zarr")
    encode([replay("peppi/v3.18.slp")], path, EncodeOptions(progress=False))
    with pytest.raises(StoreError, match="encoded with other encoding .*projectiles: store has False, asked True"):
        encode([replay("peppi/v3.18.slp")], path, EncodeOptions(progress=False, config=EncodingConfig(projectiles=True)))


def test_not_a_store(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(StoreError, match="not a melee-encode store"):
        StoreWriter(str(tmp_path))
    with pytest.raises(StoreError, match="no store at"):
        open_store(str(tmp_path / "missing.zarr"))


def _all_chunk_keys(store):
    keys = []
    for part, frames in store.parts.items():
        last = (frames - 1) // store.chunk_frames  # a partial chunk
        keys += [(part, name, c) for name in ("float", "int", "state_age") for c in sorted({0, 3, last} & set(range(last + 1)))]
    return keys


def _buffers(store, keys):
    width = {"float": store.schema.n_float, "int": store.schema.n_int, "state_age": 2}
    dtype = {"float": np.float32, "int": np.int16, "state_age": np.float32}
    return [np.full((width[name], store.chunk_frames), 7, dtype[name]) for _, name, _ in keys]


def test_read_chunks_equals_zarrs_own_reads(shared_store):
    store = open_store(shared_store)
    keys = _all_chunk_keys(store)
    assert set(store.stored_chunks(keys)) == set(keys)  # melee-encode's chunks take the fast path
    fast, reference = store.read_chunks(keys, _buffers(store, keys)), store.read_chunks_zarr(keys, _buffers(store, keys))
    for key, a, b in zip(keys, fast, reference):
        assert np.array_equal(a, b), key
    stored = store.stored_chunks(keys[:2])  # bytes fetched ahead (or from a cache) are used as they are
    again = store.read_chunks(keys, _buffers(store, keys), stored)
    assert all(np.array_equal(a, b) for a, b in zip(again, reference))


def test_chunks_of_other_codecs_are_read_through_zarr(shared_store, tmp_path):
    from conftest import recompressed_copy

    store, other = open_store(shared_store), open_store(recompressed_copy(shared_store, tmp_path / "blosc.zarr"))
    keys = _all_chunk_keys(store)
    assert other.stored_chunks(keys) == {}  # not zstd over plain bytes: no fast path
    for key, a, b in zip(keys, other.read_chunks(keys, _buffers(other, keys)), store.read_chunks_zarr(keys, _buffers(store, keys))):
        assert np.array_equal(a, b), key


def test_a_store_written_before_new_table_columns_reads_and_grows(tmp_path):
    path = str(tmp_path / "older.zarr")
    encode([replay("peppi/v3.13.slp")], path, EncodeOptions(progress=False))
    games = zarr.open_group(path, mode="r+", path="games")
    for column in ("match_id", "salvaged"):  # as a store written before these columns existed
        del games[column]
    store = open_store(path)
    assert store.games["match_id"].tolist() == [""] and store.games["salvaged"].tolist() == [""]
    encode([replay("peppi/v3.16.slp")], path, EncodeOptions(progress=False))
    grown = open_store(path)
    assert len(grown) == 2 and grown.games["match_id"][0] == "" and grown.games["match_id"][1] != ""
