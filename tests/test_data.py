"""The data pipeline on real stores: example values, exactly-once sharding, determinism, resume, split."""

import functools

import numpy as np
import pytest
import torch

from melee_encode import EncodeOptions, EncodingConfig, encode, open_store
from melee_model.batches import batch_to_device, build_batch
from melee_model.config import DataConfig
from melee_model.examples import PART_SHIFT, EncodingMismatch, ExampleSource
from melee_model.layout import FrameLayout
from melee_model.sampler import is_validation

from conftest import SHARED_GAMES, recompressed_copy, replay

SMALL = dict(batch_size=512, pieces_per_group=3, piece_frames=2048, require_fields="none", num_workers=0)


def source(path, **overrides) -> ExampleSource:
    store = open_store(path)
    config = DataConfig(**{**SMALL, **overrides})
    layout = FrameLayout(
        store.schema,
        context_len=config.context_len,
        press_events=config.press_events,
        lookahead=config.lookahead,
        lookahead_delta=config.lookahead_delta,
    )
    return ExampleSource(path, layout, config)


def epoch_ids(src: ExampleSource, split="train", epoch=0, world=1, workers=0, start_batch=0) -> list[np.ndarray]:
    """Per rank: the example ids of every batch, in order."""
    return [
        [b["example_id"].numpy() for b in src.loader(split, epoch, rank=r, world=world, num_workers=workers, start_batch=start_batch)]
        for r in range(world)
    ]


def expected_targets(src: ExampleSource, split: str) -> np.ndarray:
    """Every valid example id of a split, straight from the game table."""
    games, layout = src.store.games, src.layout
    ids = []
    for row in src.rows[split]:
        offset, length = int(games["offset"][row]), int(games["length"][row])
        positions = np.arange(offset + layout.context_len, offset + length - layout.lookahead)
        ids.append((int(games["part"][row]) << PART_SHIFT) | positions)
    return np.sort(np.concatenate(ids))


def locate(src: ExampleSource, example_id: int) -> tuple[int, int]:
    """(game row, frame index t within the game) of an example."""
    part, position = example_id >> PART_SHIFT, example_id & ((1 << PART_SHIFT) - 1)
    games = src.store.games
    row = int(np.flatnonzero((games["part"] == part) & (games["offset"] <= position) & (position < games["offset"] + games["length"]))[0])
    return row, int(position - games["offset"][row])


@functools.lru_cache(maxsize=8)
def game_frames(path: str, row: int):
    return open_store(path).read_frames(row)


def check_example(src: ExampleSource, batch: dict, i: int) -> None:
    """One example of a batch against the game's frames read back from the store."""
    layout = src.layout
    row, t = locate(src, int(batch["example_id"][i]))
    floats, ints, _ = game_frames(src.store_path, row)
    K, d = layout.context_len, layout.lookahead
    assert K <= t and t + d < len(floats)  # never crosses a game boundary
    assert np.array_equal(batch["float_ctx"][i].numpy(), floats[t - K : t])
    assert np.array_equal(batch["int_ctx"][i].numpy(), ints[t - K : t])
    controls = []
    for j in range(d + 1):
        controls.append(floats[t + j, list(layout.ctrl_columns)])
        if layout.press_events:
            buttons = list(layout.button_columns)
            controls.append(((floats[t + j, buttons] == 1) & (floats[t + j - 1, buttons] == 0)).astype(np.float32))
    assert np.array_equal(batch["next_ctrl"][i].numpy(), np.concatenate(controls))
    columns = list(layout.float_target_columns)
    base = t - 1 if layout.lookahead_delta == "from_context" else t + d - 1
    target = floats[t + d, columns] - np.where(layout.float_target_is_delta, floats[base, columns], 0)
    assert np.allclose(batch["float_tgt"][i].numpy(), target, rtol=0, atol=0)
    assert np.array_equal(batch["int_tgt"][i].numpy(), ints[t + d, list(layout.int_target_columns)])


def test_batches_have_the_contract_shapes(shared_store):
    batch = next(iter(source(shared_store).loader("train", 0)))
    assert batch["float_ctx"].shape == (512, 10, 138) and batch["float_ctx"].dtype == torch.float32
    assert batch["int_ctx"].shape == (512, 10, 17) and batch["int_ctx"].dtype == torch.int16
    assert batch["next_ctrl"].shape == (512, 26)
    assert batch["float_tgt"].shape == (512, 112) and batch["int_tgt"].shape == (512, 12)


def test_examples_match_the_store_value_by_value(shared_store):
    src = source(shared_store)
    checked_rows = set()
    for batch in src.loader("train", 0):
        for i in range(0, len(batch["example_id"]), 97):
            check_example(src, batch, i)
            checked_rows.add(locate(src, int(batch["example_id"][i]))[0])
    assert len(checked_rows) > 20


def test_examples_at_game_edges_and_in_a_rollback_game(shared_store):
    src = source(shared_store, pieces_per_group=1)
    games = src.store.games
    rollback = int(np.flatnonzero([s.endswith("duplicate_game_end.slp") for s in games["source"]])[0])
    split = "val" if rollback in src.rows["val"] else "train"
    offset, length, part = int(games["offset"][rollback]), int(games["length"][rollback]), int(games["part"][rollback])
    wanted = {(part << PART_SHIFT) | p for p in (offset + 10, offset + 11, offset + length - 1, offset + length // 2)}
    seen = set()
    for batch in src.loader(split, 0):
        ids = batch["example_id"].numpy()
        for i in np.flatnonzero(np.isin(ids, list(wanted))):
            check_example(src, batch, int(i))
            seen.add(int(ids[i]))
    assert seen == wanted  # the first and last examples of the game, and one in the middle


@pytest.mark.parametrize(
    "options",
    [
        dict(press_events=True),
        dict(lookahead=2),
        dict(lookahead=2, lookahead_delta="from_previous"),
        dict(context_len=4, press_events=True, lookahead=1),
    ],
)
def test_example_variants(shared_store, options):
    src = source(shared_store, **options)
    batch = next(iter(src.loader("train", 0)))
    assert batch["next_ctrl"].shape[1] == src.layout.ctrl_dim
    for i in range(0, 512, 37):
        check_example(src, batch, i)


@pytest.mark.parametrize(
    "lookahead, lookahead_delta, delta",
    [(0, "from_context", 19), (0, "from_previous", 19), (2, "from_context", 63), (2, "from_previous", 23)],
)
def test_delta_targets_with_a_lookahead(lookahead, lookahead_delta, delta):
    # Every column of frame f holds f**2; the example's first control frame is t = 10, its target t+d.
    # From the last context frame: (t+d)**2 - (t-1)**2 = 19 (d 0) or 63 (d 2); from the frame before
    # the target: (t+d)**2 - (t+d-1)**2 = 19 or 23.
    layout = FrameLayout(EncodingConfig().schema(), lookahead=lookahead, lookahead_delta=lookahead_delta)
    floats = np.repeat((np.arange(20.0) ** 2)[:, None], layout.n_float, axis=1).astype(np.float32)  # (20, F)
    ints = np.zeros((20, layout.n_int), np.int16)
    float_tgt = build_batch(floats, ints, np.array([10]), layout)["float_tgt"][0]  # (T,)
    assert set(float_tgt[list(layout.delta_target_positions)].tolist()) == {delta}
    absolute = [j for j in range(layout.float_target_dim) if not layout.float_target_is_delta[j]]
    assert set(float_tgt[absolute].tolist()) == {(10 + lookahead) ** 2}
    with pytest.raises(ValueError, match="lookahead_delta must be one of"):
        FrameLayout(EncodingConfig().schema(), lookahead_delta="from_t")


def test_stocks_can_be_a_delta_target():
    # Every column of frame f holds f**2: a delta target at t = 10 is 100 - 81 = 19, an absolute one 100.
    card, delta = FrameLayout(EncodingConfig().schema()), FrameLayout(EncodingConfig().schema(), stocks_target="delta")
    stocks = [card.float_target_index(f"p{p}.stocks") for p in (0, 1)]
    assert not any(card.float_target_is_delta[j] for j in stocks)  # the run card's: absolute
    assert len(delta.delta_target_positions) == len(card.delta_target_positions) + 2
    assert set(delta.delta_target_positions) - set(card.delta_target_positions) == set(stocks)
    assert delta.float_target_columns == card.float_target_columns  # the same heads, in the same order
    floats = np.repeat((np.arange(20.0) ** 2)[:, None], delta.n_float, axis=1).astype(np.float32)  # (20, F)
    float_tgt = build_batch(floats, np.zeros((20, delta.n_int), np.int16), np.array([10]), delta)["float_tgt"][0]  # (T,)
    dynamics = range(delta.float_blocks["dynamics"].start, delta.float_blocks["dynamics"].stop)
    assert [float_tgt[j] for j in dynamics] == [19.0 if j in stocks else 100.0 for j in dynamics]
    with pytest.raises(ValueError, match="stocks_target must be one of"):
        FrameLayout(EncodingConfig().schema(), stocks_target="classes")


@pytest.mark.parametrize("lookahead, lookahead_delta", [(0, "from_context"), (2, "from_context"), (2, "from_previous")])
def test_float_target_std_is_the_spread_of_the_examples_targets(shared_store, lookahead, lookahead_delta):
    src = source(shared_store, lookahead=lookahead, lookahead_delta=lookahead_delta)
    every_game = src.float_target_std(games=len(src.rows["train"]))
    targets = np.concatenate([b["float_tgt"].numpy() for b in src.loader("train", 0)]).astype(np.float64)  # (examples, T)
    np.testing.assert_allclose(every_game, targets.std(axis=0), rtol=1e-3, atol=1e-6)
    assert src.float_target_std(games=4).shape == every_game.shape


@pytest.mark.parametrize("chunk_visits", [0, 4])
def test_every_example_once_across_2_ranks_and_2_workers(shared_store, chunk_visits):
    src = source(shared_store, chunk_visits=chunk_visits)
    ranks = epoch_ids(src, world=2, workers=2)
    seen = np.concatenate([ids for rank in ranks for ids in rank])
    assert len(seen) == len(np.unique(seen))  # nothing twice
    assert np.array_equal(np.sort(seen), expected_targets(src, "train"))  # nothing missing
    steps = [len(rank) for rank in ranks]
    assert abs(steps[0] - steps[1]) <= 1 and max(steps) == src.plan("train", 0, world=2).batches_per_rank
    val = np.concatenate([ids for rank in epoch_ids(src, "val", world=2, workers=2) for ids in rank])
    assert np.array_equal(np.sort(val), expected_targets(src, "val"))


def test_order_is_a_pure_function_of_seed_and_epoch(shared_store):
    first, again = epoch_ids(source(shared_store), epoch=3)[0], epoch_ids(source(shared_store), epoch=3, workers=2)[0]
    assert len(first) == len(again)
    # With 2 workers the batches come round-robin from two halves of the stream; as a set per batch
    # they must be the same batches as one process makes.
    assert sorted(map(tuple, first)) == sorted(map(tuple, again))
    assert [b.tolist() for b in epoch_ids(source(shared_store), epoch=3)[0]] == [b.tolist() for b in first]
    other = np.concatenate(epoch_ids(source(shared_store), epoch=4)[0])
    assert not np.array_equal(other, np.concatenate(first)) and np.array_equal(np.sort(other), np.sort(np.concatenate(first)))
    seeded = np.concatenate(epoch_ids(source(shared_store, seed=1), epoch=3)[0])
    assert not np.array_equal(seeded, np.concatenate(first))


@pytest.mark.parametrize("workers, chunk_visits", [(0, 0), (2, 0), (2, 4)])
def test_resume_mid_epoch_gives_the_same_batches(shared_store, workers, chunk_visits):
    src = source(shared_store, chunk_visits=chunk_visits)
    full = [b["example_id"].numpy() for b in src.loader("train", 1, num_workers=workers)]
    for start in (1, 5, len(full) - 1):
        resumed = [b["example_id"].numpy() for b in src.loader("train", 1, num_workers=workers, start_batch=start)]
        assert [r.tolist() for r in resumed] == [f.tolist() for f in full[start:]], start


def test_split_is_by_game_and_stable_when_the_store_grows(replays_dir, tmp_path):
    small, big = str(tmp_path / "small.zarr"), str(tmp_path / "big.zarr")
    encode([replay("peppi/ics2.slp"), replay("peppi/v2.0.slp"), replay("peppi/items.slp")], small, EncodeOptions(progress=False))
    encode([replays_dir], big, EncodeOptions(progress=False))
    for path in (small, big):
        src = source(path)
        train, val = set(src.rows["train"]), set(src.rows["val"])
        assert not train & val
    side = lambda path: {h: bool(v) for h, v in zip(open_store(path).games["hash"], is_validation(open_store(path).games, 0.1))}  # noqa: E731
    small_side, big_side = side(small), side(big)
    assert all(big_side[h] == v for h, v in small_side.items())
    assert 0.02 < np.mean(list(big_side.values())) < 0.3


def test_game_filters(shared_store):
    every = source(shared_store)
    assert len(every.rows["train"]) + len(every.rows["val"]) == SHARED_GAMES
    games = every.store.games
    game_only = source(shared_store, end_methods=["game"])
    assert set(games["end_method"][np.concatenate(list(game_only.rows.values()))]) == {2}
    fd = source(shared_store, stages=["fd"], characters=["fox"])
    rows = np.concatenate(list(fd.rows.values()))
    assert len(rows) == 4 and set(games["stage"][rows]) == {32}
    modern = source(shared_store, require_fields="used")  # the default: games with every field the encoding reads
    rows = np.concatenate(list(modern.rows.values()))
    assert 0 < len(rows) < SHARED_GAMES and not games["fields_missing"][rows].any()


def test_encoding_mismatch_names_the_fields(shared_store):
    store = open_store(shared_store)
    with pytest.raises(EncodingMismatch, match="projectiles: store has False, config has True"):
        ExampleSource(shared_store, FrameLayout(store.schema), DataConfig(**SMALL), encoding=EncodingConfig(projectiles=True))


def test_a_store_of_other_codecs_gives_the_same_batches(shared_store, tmp_path):
    """Chunks melee-encode did not write (another codec) are read through zarr, with equal results."""
    copy = recompressed_copy(shared_store, tmp_path / "blosc.zarr")
    ours, theirs = source(shared_store), source(copy)
    for mine, other in zip(ours.loader("train", 0), theirs.loader("train", 0)):
        for key in mine:
            assert np.array_equal(mine[key].numpy(), other[key].numpy()), key


# ---------------------------------------------------------------- the sequence objective's windows

SEQ = dict(objective="sequence", seq_len=48, warmup=5, batch_size=16, pieces_per_group=3, piece_frames=2048)


def window_targets(src: ExampleSource, batch: dict) -> list[tuple[int, int]]:
    """(game row, target frame t within the game) of every target position of a batch's windows."""
    out = []
    for i, example_id in enumerate(batch["example_id"].tolist()):
        row, s = locate(src, example_id)
        out += [(row, s + j + 1) for j in np.flatnonzero(batch["target_mask"][i].numpy())]
    return out


def test_windows_are_the_stored_frames_and_mask_only_their_own_game(shared_store):
    src = source(shared_store, **SEQ)
    L, W = SEQ["seq_len"], SEQ["warmup"]
    batch = next(iter(src.loader("train", 0)))
    assert batch["float_seq"].shape == (16, 138, L + 1) and batch["int_seq"].shape == (16, 17, L + 1)  # feature-major
    assert batch["target_mask"].shape == (16, L) and batch["target_mask"].dtype == torch.bool
    for i, example_id in enumerate(batch["example_id"].tolist()):
        row, s = locate(src, example_id)
        floats, ints, _ = game_frames(src.store_path, row)
        inside = min(L + 1, len(floats) - s)  # frames past the game's end are the next game's: never targets
        assert np.array_equal(batch["float_seq"][i].numpy()[:, :inside], floats[s : s + inside].T)
        assert np.array_equal(batch["int_seq"][i].numpy()[:, :inside], ints[s : s + inside].T)
        mask = batch["target_mask"][i].numpy()
        assert not mask[:W].any() and mask[W : inside - 1].all() and not mask[inside - 1 :].any()


def test_every_target_frame_once_across_2_ranks_and_2_workers(shared_store):
    src = source(shared_store, **SEQ)
    for split in ("train", "val"):
        seen = []
        for rank in range(2):
            for batch in src.loader(split, 1, rank=rank, world=2, num_workers=2):
                seen += window_targets(src, batch)
        games = src.store.games
        expected = [(int(r), t) for r in src.rows[split] for t in range(SEQ["warmup"] + 1, int(games["length"][r]))]
        assert len(seen) == len(set(seen)) == src.target_count(split) and set(seen) == set(expected)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_gives_the_same_windows(shared_store, workers):
    src = source(shared_store, **SEQ)
    full = [b["example_id"].numpy() for b in src.loader("train", 2, num_workers=workers)]
    for start in (1, len(full) // 2, len(full) - 1):
        resumed = [b["example_id"].numpy() for b in src.loader("train", 2, num_workers=workers, start_batch=start)]
        assert [r.tolist() for r in resumed] == [f.tolist() for f in full[start:]], start


def test_sequence_batches_reach_the_device_frame_major(shared_store):
    batch = batch_to_device(next(iter(source(shared_store, **SEQ).loader("train", 0))), torch.device("cpu"))
    assert batch["float_seq"].shape == (16, SEQ["seq_len"] + 1, 138) and batch["int_seq"].dtype == torch.int64
