"""The sampler without a store: game selection, chunk targets, epoch plans and resume, on hand-made tables."""

import numpy as np
import pytest

from melee_encode import EncodingConfig, GameFilter
from melee_encode.format import fields_missing_mask
from melee_model.config import DataConfig
from melee_model.sampler import EpochPlan, data_filter, is_validation, items_of, plan_pieces, round_robin_resume, select_games

PIECE = 100


def table(lengths, parts=None, **columns) -> dict:
    """A per-game table of games stored back to back in their parts, with the columns the filters read."""
    lengths = np.array(lengths, dtype=np.int32)
    parts = np.zeros(len(lengths), np.int32) if parts is None else np.array(parts, np.int32)
    offsets = np.zeros(len(lengths), np.int64)
    for part in np.unique(parts):
        mine = np.flatnonzero(parts == part)
        offsets[mine] = np.concatenate([[0], np.cumsum(lengths[mine])[:-1]])
    games = {
        "hash": np.array([f"{i * 2654435761 % 16**8:08x}" + "0" * 24 for i in range(len(lengths))]),
        "part": parts,
        "offset": offsets,
        "length": lengths,
        "end_method": np.full(len(lengths), 2, np.int8),
        "stage": np.full(len(lengths), 31, np.int16),
        "characters": np.tile(np.array([[1, 2]], np.uint8), (len(lengths), 1)),
        "fields_missing": np.zeros(len(lengths), np.uint16),
    }
    games.update({name: np.asarray(values) for name, values in columns.items()})
    return games


def every_target(games, rows, context_len=10, lookahead=0) -> set:
    return {
        (int(games["part"][r]), int(t))
        for r in rows
        for t in range(games["offset"][r] + context_len, games["offset"][r] + games["length"][r] - lookahead)
    }


def card_pieces(games, rows, piece_frames=PIECE, context_len=10, lookahead=0):
    return plan_pieces(games, rows, piece_frames, first=context_len, last=lookahead, stride=1)


def test_card_pieces_hold_every_target_once_and_inside_their_piece():
    games = table([250, 40, 333, 11, 120], parts=[0, 0, 1, 1, 1])
    rows = np.arange(5)
    pieces = card_pieces(games, rows, lookahead=2)
    seen = []
    for piece in pieces:
        positions, ends = piece.items()
        assert np.all((piece.index * PIECE <= positions) & (positions < (piece.index + 1) * PIECE))
        seen += [(piece.part, int(t)) for t in positions]
        assert piece.last == positions.max()
    assert len(seen) == len(set(seen)) and set(seen) == every_target(games, rows, 10, 2)  # game 3 (11 frames) has none
    assert [(p.part, p.index) for p in pieces] == sorted((p.part, p.index) for p in pieces)
    assert sum(p.count for p in pieces) == pieces.total == len(seen)


@pytest.mark.parametrize("seq_len, warmup", [(64, 0), (32, 8), (7, 3)])
def test_sequence_windows_cover_every_target_frame_once(seq_len, warmup):
    games = table([250, 40, 333, 11, 120, 65], parts=[0, 0, 1, 1, 1, 1])
    items = items_of(DataConfig(objective="sequence", seq_len=seq_len, warmup=warmup))
    assert (items.first, items.last, items.stride, items.before, items.after) == (0, warmup + 1, seq_len - warmup, 0, seq_len)
    pieces = plan_pieces(games, np.arange(6), PIECE, items.first, items.last, items.stride)
    covered = []
    for piece in pieces:
        for start, end in zip(*piece.items()):
            j = np.arange(seq_len)
            targets = start + j + 1  # position j of the window predicts its frame j + 1
            covered += [(piece.part, int(t)) for t in targets[(j >= warmup) & (targets < end)]]
    expected = {
        (int(games["part"][r]), int(t))
        for r in range(6)
        for t in range(games["offset"][r] + warmup + 1, games["offset"][r] + games["length"][r])
    }
    assert len(covered) == len(set(covered)) and set(covered) == expected


@pytest.mark.parametrize("chunk_visits", [0, 2])
@pytest.mark.parametrize("world, workers, batch", [(1, 1, 64), (2, 2, 50), (3, 2, 7)])
def test_an_epoch_covers_every_example_once_across_ranks_and_workers(world, workers, batch, chunk_visits):
    games = table([250, 40, 333, 11, 120, 900])
    pieces = card_pieces(games, np.arange(6))
    plan = EpochPlan(
        pieces,
        seed=3,
        epoch=1,
        shuffle=True,
        pieces_per_group=2,
        batch_size=batch,
        world=world,
        chunk_frames=4 * PIECE,
        chunk_visits=chunk_visits,
    )
    covered = []
    for rank in range(world):
        for first, stop in plan.worker_batches(rank, workers):
            start, end = plan.stream_range(rank, first, stop)
            covered.append(np.arange(start, end))
    covered = np.concatenate(covered)
    assert np.array_equal(np.sort(covered), np.arange(plan.total))
    stream = [(pieces[plan.groups[g][k]].part, int(t)) for g in range(len(plan.groups)) for k, t, _ in zip(*plan.group_items(g))]
    assert len(stream) == plan.total == len(set(stream)) and set(stream) == every_target(games, np.arange(6))
    batches = [plan.rank_batches(r) for r in range(world)]
    assert max(batches) - min(batches) <= 1 and plan.batches_per_rank == max(batches)


def test_groups_draw_pieces_from_the_whole_store_anew_every_epoch():
    games = table([1000] * 40)  # 400 pieces in store order
    pieces = card_pieces(games, np.arange(40))

    def groups(epoch):
        return [tuple(g) for g in EpochPlan(pieces, seed=0, epoch=epoch, shuffle=True, pieces_per_group=20, batch_size=64).groups]

    first = groups(1)
    assert sorted(i for g in first for i in g) == list(range(len(pieces)))  # each piece in one group
    spread = [np.ptp(g) for g in first]
    assert np.median(spread) > len(pieces) / 2  # not neighbours: drawn from all over the store
    assert groups(1) == first and groups(2) != first


def test_a_group_decodes_each_chunk_for_a_hand_of_its_pieces():
    games = table([1000] * 40)  # 400 pieces, 10 to a chunk of 1,000 frames: 40 chunks
    pieces = card_pieces(games, np.arange(40))
    chunk = pieces.index * PIECE // 1000

    def plan(visits, epoch=1):
        return EpochPlan(
            pieces, seed=0, epoch=epoch, shuffle=True, pieces_per_group=20, batch_size=64, chunk_frames=1000, chunk_visits=visits
        )

    dealt, one_by_one = plan(2), plan(0)
    order = np.concatenate(dealt.groups)
    for c in range(40):
        mine = np.flatnonzero(np.isin(order, np.flatnonzero(chunk == c)))  # where chunk c's pieces lie in the order
        runs = np.split(mine, np.flatnonzero(np.diff(mine) > 1) + 1)
        assert len(runs) <= 2 and all(len(run) == 5 for run in runs) or len(runs) == 1  # two hands of 5 (maybe adjacent)
    chunks_read = [len(np.unique(chunk[g])) for g in dealt.groups]
    assert max(chunks_read) <= 5 and np.median([len(np.unique(chunk[g])) for g in one_by_one.groups]) >= 10
    assert np.median([np.ptp(chunk[g]) for g in dealt.groups]) > 20  # hands from all over the store
    assert [tuple(g) for g in plan(2, epoch=2).groups] != [tuple(g) for g in dealt.groups]
    assert [tuple(g) for g in plan(2).groups] == [tuple(g) for g in dealt.groups]


@pytest.mark.parametrize("chunk_visits", [0, 2])
def test_order_is_a_pure_function_of_seed_and_epoch(chunk_visits):
    pieces = card_pieces(table([250, 40, 333, 11, 120, 900]), np.arange(6))

    def order(seed, epoch):
        plan = EpochPlan(
            pieces,
            seed=seed,
            epoch=epoch,
            shuffle=True,
            pieces_per_group=2,
            batch_size=32,
            chunk_frames=4 * PIECE,
            chunk_visits=chunk_visits,
        )
        return np.concatenate([plan.group_items(g)[1] for g in range(len(plan.groups))])

    assert np.array_equal(order(0, 1), order(0, 1))
    assert not np.array_equal(order(0, 1), order(0, 2)) and not np.array_equal(order(0, 1), order(1, 1))
    assert np.array_equal(np.sort(order(0, 1)), np.sort(order(1, 2)))
    plain = EpochPlan(pieces, seed=0, epoch=1, shuffle=False, pieces_per_group=2, batch_size=32)  # validation: table order
    positions = np.concatenate([plain.group_items(g)[1] for g in range(len(plain.groups))])
    assert np.array_equal(positions, np.sort(positions))


def test_round_robin_resume():
    assert round_robin_resume([3, 3], 0) == ([0, 0], 0)
    assert round_robin_resume([3, 3], 3) == ([2, 1], 1)
    assert round_robin_resume([1, 3], 3) == ([1, 2], 1)  # worker 0 runs out; worker 1 keeps going
    assert round_robin_resume([2, 3, 3], 7) == ([2, 3, 2], 2)
    assert round_robin_resume([2, 2], 9)[0] == [2, 2]


def test_split_is_decided_by_the_content_hash():
    hashes = np.array(["00000000" + "f" * 24, "19999999" + "0" * 24, "1999999a" + "0" * 24, "ffffffff" + "0" * 24])
    assert is_validation({"hash": hashes}, 0.1).tolist() == [True, True, False, False]  # 0x19999999 / 16**8 < 0.1
    empty_ids = {"hash": hashes, "match_id": np.array([""] * 4)}  # a store with the column, no identities
    assert is_validation(empty_ids, 0.1).tolist() == [True, True, False, False]


# sha256 prefixes worked out once: "match-a" e6615737 (0.8999 of the way), RANKED 01de6892 (0.0073).
RANKED = "mode.ranked-2024-05-01T12:00:07Z-ABCD#123-EFGH#456"


def test_the_games_of_one_match_land_on_the_same_side():
    # Rows 2 and 3 are both players' replays of match-a: their content hashes fall on opposite sides
    # (0x0 in validation, 0xffffffff in training); rows 4 and 5 are one ranked match the same way.
    hashes = ["00000000", "ffffffff", "00000000", "ffffffff", "ffffffff", "80000000"]
    games = table(
        [500] * 6, hash=np.array([h + "0" * 56 for h in hashes]), match_id=np.array(["", "", "match-a", "match-a", RANKED, RANKED])
    )
    assert is_validation(games, 0.1).tolist() == [True, False, False, False, True, True]
    assert is_validation(games, 0.9).tolist() == [True, False, True, True, True, True]  # 0.8999 < 0.9
    every = GameFilter(min_frames=11)
    assert select_games(games, every, "val", 0.1).tolist() == [0, 4, 5]
    assert select_games(games, every, "train", 0.1).tolist() == [1, 2, 3]
    older = {k: v for k, v in games.items() if k != "match_id"}  # a store written before the column
    assert is_validation(older, 0.1).tolist() == [True, False, True, False, False, False]


def test_select_games_applies_the_filter_within_a_split():
    missing = fields_missing_mask(["velocities"])
    games = table([500] * 40, end_method=[2, 7] * 20, fields_missing=[0, 0, missing, 0] * 10, stage=[31] * 39 + [32])
    every = GameFilter(min_frames=11)
    train, val = select_games(games, every, "train", 0.25), select_games(games, every, "val", 0.25)
    assert not set(train) & set(val) and len(train) + len(val) == 40
    game_only = data_filter(DataConfig(end_methods=["game"], require_fields="used"), EncodingConfig(), span=11)
    kept = np.concatenate([select_games(games, game_only, split, 0.25) for split in ("train", "val")])
    assert sorted(kept) == [i for i in range(40) if i % 2 == 0 and i % 4 != 2]
    assert select_games(games, data_filter(DataConfig(stages=["fd"]), EncodingConfig(), 11), "train", 0.0).tolist() == [39]
    with pytest.raises(ValueError, match="split must be one of"):
        select_games(games, every, "test", 0.1)
    with pytest.raises(ValueError, match="require_fields must be"):
        data_filter(DataConfig(require_fields="all"), EncodingConfig(), 11)


def test_item_options_are_checked():
    with pytest.raises(ValueError, match="warmup must be in"):
        items_of(DataConfig(objective="sequence", seq_len=16, warmup=16))
    with pytest.raises(ValueError, match="lookahead must be 0"):
        items_of(DataConfig(objective="sequence", lookahead=2))
    with pytest.raises(ValueError, match="objective must be"):
        items_of(DataConfig(objective="every"))
