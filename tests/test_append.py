"""Appending games already encoded (`melee_encode.append`): equal read-back, one game per hash, resume."""

import numpy as np
import pytest

from melee_encode import EncodingConfig, StoreError, open_store
from melee_encode.append import GameAppender

from conftest import SHARED_GAMES


def _copy_hash(hash: str, copy: int) -> str:
    return f"{copy:08x}{hash[8:]}"


def _assert_same_game(got, expected):
    assert np.array_equal(got.floats, expected.floats)
    assert np.array_equal(got.ints, expected.ints)
    assert np.array_equal(got.state_age, expected.state_age)
    assert got.info == expected.info and got.nonfinite_replaced == expected.nonfinite_replaced


def test_a_store_of_appended_games_reads_back_equal_to_its_source(shared_store, tmp_path):
    source = open_store(shared_store)
    path = str(tmp_path / "copy.zarr")
    # Small chunks and parts, so games cross chunks and the copy has several parts.
    with GameAppender(path, chunk_frames=1024, part_frames=40_000) as appender:
        for copy in range(2):
            for i in range(len(source)):
                assert appender.add(source.game(i), _copy_hash(source.games["hash"][i], copy), f"copy{copy}/{source.games['source'][i]}")
    copied = open_store(path)
    assert len(copied) == 2 * SHARED_GAMES and copied.n_frames == 2 * source.n_frames
    assert len(copied.parts) > 2 and copied.chunk_frames == 1024
    for row in range(len(copied)):
        copy, i = divmod(row, SHARED_GAMES)
        assert copied.games["hash"][row] == _copy_hash(source.games["hash"][i], copy)
        assert copied.games["source"][row] == f"copy{copy}/{source.games['source'][i]}"
        _assert_same_game(copied.game(row), source.game(i))


def test_a_hash_the_store_holds_is_passed_over(shared_store, tmp_path):
    source = open_store(shared_store)
    game, hash = source.game(0), source.games["hash"][0]
    path = str(tmp_path / "once.zarr")
    with GameAppender(path) as appender:
        assert appender.add(game, hash, "first")
        assert not appender.add(game, hash, "same hash, same run")
    with GameAppender(path) as appender:
        assert not appender.add(game, hash, "same hash, next run")
        assert appender.games == 0
    assert open_store(path).games["source"].tolist() == ["first"]


def test_bad_identities_and_other_encodings_are_refused(shared_store, tmp_path):
    game = open_store(shared_store).game(0)
    with GameAppender(str(tmp_path / "a.zarr")) as appender:
        with pytest.raises(StoreError, match="not 32 lowercase hex digits"):
            appender.add(game, "copy-1", "x")
    with GameAppender(str(tmp_path / "b.zarr"), config=EncodingConfig(projectiles=True)) as appender:
        with pytest.raises(StoreError, match="the store holds .*'projectiles': True"):
            appender.add(game, "0" * 32, "x")


def test_an_interrupted_run_keeps_its_committed_parts_and_resumes(shared_store, tmp_path):
    source = open_store(shared_store)
    path = str(tmp_path / "resumed.zarr")
    stop_after = SHARED_GAMES // 2
    with pytest.raises(KeyboardInterrupt):
        with GameAppender(path, chunk_frames=1024, part_frames=40_000) as appender:
            for i in range(stop_after):
                appender.add(source.game(i), source.games["hash"][i], source.games["source"][i])
            raise KeyboardInterrupt
    interrupted = open_store(path)
    committed = interrupted.games["hash"].tolist()
    assert 0 < len(committed) < stop_after  # the open part was not committed
    assert committed == source.games["hash"][: len(committed)].tolist()

    with GameAppender(path, chunk_frames=1024, part_frames=40_000) as appender:
        added = [appender.add(source.game(i), source.games["hash"][i], source.games["source"][i]) for i in range(len(source))]
    assert added == [i >= len(committed) for i in range(len(source))]
    resumed = open_store(path)
    assert resumed.games["hash"].tolist() == source.games["hash"].tolist()
    for i in range(len(resumed)):
        _assert_same_game(resumed.game(i), source.game(i))
    parts_on_disk = {int(name) for name in resumed.root["parts"].group_keys()}
    assert parts_on_disk == set(resumed.parts)  # the interrupted run's open part is gone
