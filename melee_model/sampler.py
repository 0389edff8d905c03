"""Which examples an epoch holds, in which order, and which rank and loader worker produces each.

Everything here is index arithmetic over the per-game table (numpy only: no store, no torch):
- games are selected (the data config's `GameFilter`, then a 90/10 train/val split decided per
  match: by the game's `match_id` where the replay gave one, so that both players' uploads of one
  netplay match land on the same side, else by its content hash; either way a game stays on its
  side when the store grows);
- the targets of each stored chunk become a `ChunkTargets`: the examples whose target frame lies in
  that chunk of a part;
- an `EpochPlan` shuffles the chunks (train), takes them `chunks_per_group` at a time as groups whose
  examples are shuffled together, and cuts the resulting stream into contiguous ranges, one per rank
  and loader worker, in whole batches.

Invariant: the order of an epoch's examples is a pure function of (seed, epoch, the selected games,
the layout and the batching); every example appears exactly once per epoch across all ranks and
workers. `round_robin_resume` says where each worker stands after a number of batches, so a resumed
epoch continues without producing the consumed batches again.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from melee_encode import EncodingConfig, GameFilter
from melee_encode.encoding import sources_used
from melee_encode.errors import ConfigError
from melee_encode.ids import character_id, end_method_id, stage_id
from melee_model.config import DataConfig

SPLITS = ("train", "val")
Table = dict[str, np.ndarray]  # the per-game table, as Store.games gives it


def data_filter(config: DataConfig, encoding: EncodingConfig, span: int) -> GameFilter:
    """The load-time filter of a data config: its names resolved to ids, games of at least `span`
    frames (one example), and with `require_fields: used` every replay field the encoding reads."""
    if config.require_fields not in ("used", "none"):
        raise ConfigError(f"data.require_fields must be 'used' or 'none', got {config.require_fields!r}")
    return GameFilter(
        end_methods=tuple(end_method_id(m) for m in config.end_methods),
        characters=tuple(character_id(c) for c in config.characters),
        stages=tuple(stage_id(s) for s in config.stages),
        min_frames=span,
        required_fields=sources_used(encoding) if config.require_fields == "used" else (),
    )


def split_positions(games: Table) -> np.ndarray:
    """(games,) float64, uniform in [0, 1): where each game falls for the split.

    A game whose table row has a non-empty "match_id" is placed by a hash of it, so the games of one
    match share their place; any other game (and every game of a store without that column) by its
    content hash, as stores have always been split.
    """
    match_ids = games.get("match_id", np.full(len(games["hash"]), ""))
    keys = [hashlib.sha256(str(m).encode()).hexdigest() if m else h for m, h in zip(match_ids, games["hash"])]
    return np.array([int(k[:8], 16) for k in keys], dtype=np.float64) / 16**8


def is_validation(games: Table, val_fraction: float) -> np.ndarray:
    """Per game: True for the validation split (a match's games all on one side; stable as the store grows)."""
    return split_positions(games) < val_fraction


def select_games(games: Table, game_filter: GameFilter, split: str, val_fraction: float) -> np.ndarray:
    """Rows of the per-game table in `split` that pass the filter."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    keep = is_validation(games, val_fraction) == (split == "val")
    return np.flatnonzero(keep & game_filter.mask(games))


@dataclass(frozen=True)
class ChunkTargets:
    """The examples whose target frame lies in one stored chunk: target positions in [starts, stops)."""

    part: int
    chunk: int
    starts: np.ndarray  # (pieces,) int64, part coordinates; one piece per game overlapping the chunk
    stops: np.ndarray

    @property
    def count(self) -> int:
        return int((self.stops - self.starts).sum())


def plan_chunk_targets(games: Table, rows: np.ndarray, chunk_frames: int, context_len: int, lookahead: int) -> list[ChunkTargets]:
    """One ChunkTargets per (part, chunk) holding examples of the selected games, in (part, chunk) order.

    An example is named by its first control frame t: it reads frames t-K .. t+lookahead, so t
    ranges over [offset + K, offset + length - lookahead) of its game; games too short for one
    example have none.
    """
    rows = rows[games["length"][rows] > context_len + lookahead]
    part = games["part"][rows].astype(np.int64)
    first = games["offset"][rows].astype(np.int64) + context_len
    end = games["offset"][rows].astype(np.int64) + games["length"][rows] - lookahead
    # Split each game's range of targets at chunk boundaries.
    first_chunk, last_chunk = first // chunk_frames, (end - 1) // chunk_frames
    spans = last_chunk - first_chunk + 1
    game = np.repeat(np.arange(len(rows)), spans)  # (pieces,)
    piece_chunk = np.repeat(first_chunk, spans) + (np.arange(spans.sum()) - np.repeat(np.cumsum(spans) - spans, spans))
    starts = np.maximum(first[game], piece_chunk * chunk_frames)
    stops = np.minimum(end[game], (piece_chunk + 1) * chunk_frames)
    piece_part = part[game]
    order = np.lexsort((starts, piece_chunk, piece_part))
    starts, stops, piece_part, piece_chunk = starts[order], stops[order], piece_part[order], piece_chunk[order]
    keys = piece_part * (1 << 32) + piece_chunk
    boundaries = np.flatnonzero(np.diff(keys)) + 1
    edges = zip(np.concatenate([[0], boundaries]), np.concatenate([boundaries, [len(keys)]]))
    return [ChunkTargets(int(piece_part[a]), int(piece_chunk[a]), starts[a:b], stops[a:b]) for a, b in edges if b > a]


class EpochPlan:
    """The example stream of one epoch and its split over ranks and loader workers.

    Groups are runs of `chunks_per_group` consecutive chunks (neighbouring chunks share their edge
    frames, so a run decodes each chunk once plus one chunk before it); for train, the order of the
    groups is shuffled by (seed, epoch) and each group's examples by (seed, epoch, group). The stream
    is the groups in that order. Rank r takes the r-th of `world` near-equal contiguous ranges of
    the stream; inside it, worker w takes a contiguous run of whole batches.
    """

    def __init__(self, chunks: list[ChunkTargets], *, seed: int, epoch: int, shuffle: bool, chunks_per_group: int, batch_size: int, world: int = 1):
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        self.batch_size, self.world = batch_size, world
        self.chunks = chunks
        size = max(1, chunks_per_group)
        runs = [np.arange(a, min(a + size, len(chunks))) for a in range(0, len(chunks), size)]
        order = np.random.default_rng([seed, epoch]).permutation(len(runs)) if shuffle else np.arange(len(runs))
        self.groups = [runs[g] for g in order]  # chunk indices of each group, in stream order
        counts = np.array([c.count for c in chunks], dtype=np.int64)
        group_counts = np.array([counts[g].sum() for g in self.groups], dtype=np.int64)
        self.group_starts = np.concatenate([[0], np.cumsum(group_counts)]).astype(np.int64)  # stream offset of each group
        self.total = int(self.group_starts[-1])
        self.rank_starts = [self.total * r // world for r in range(world + 1)]

    def rank_batches(self, rank: int) -> int:
        """Batches rank `rank` gets this epoch (ranks differ by at most one)."""
        return math.ceil((self.rank_starts[rank + 1] - self.rank_starts[rank]) / self.batch_size)

    @property
    def batches_per_rank(self) -> int:
        """Batches every rank runs this epoch: the most any rank gets (a rank with one fewer takes an
        empty step, so that gradients still synchronise)."""
        return max(self.rank_batches(r) for r in range(self.world))

    def worker_batches(self, rank: int, workers: int) -> list[tuple[int, int]]:
        """Per worker: the (first, stop) batch numbers of the rank's batches it produces."""
        n = self.rank_batches(rank)
        return [(n * w // workers, n * (w + 1) // workers) for w in range(workers)]

    def stream_range(self, rank: int, first_batch: int, stop_batch: int) -> tuple[int, int]:
        """The stream positions [start, stop) of batches [first_batch, stop_batch) of a rank."""
        base, end = self.rank_starts[rank], self.rank_starts[rank + 1]
        return min(base + first_batch * self.batch_size, end), min(base + stop_batch * self.batch_size, end)

    def group_examples(self, group: int) -> tuple[np.ndarray, np.ndarray]:
        """(chunk index within the group, target position) of the group's examples, in stream order."""
        chunk_ids, positions = [], []
        for k, c in enumerate(self.groups[group]):
            chunk = self.chunks[c]
            lengths = chunk.stops - chunk.starts
            within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            positions.append(np.repeat(chunk.starts, lengths) + within)
            chunk_ids.append(np.full(int(lengths.sum()), k))
        chunk_ids, positions = np.concatenate(chunk_ids), np.concatenate(positions)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, int(group)]).permutation(len(positions))
            chunk_ids, positions = chunk_ids[order], positions[order]
        return chunk_ids, positions

    def groups_in(self, start: int, end: int) -> list[int]:
        """The groups whose examples overlap stream positions [start, end), in stream order."""
        starts = self.group_starts
        return [g for g in range(len(self.groups)) if starts[g + 1] > max(start, starts[g]) and starts[g] < end]


def round_robin_resume(counts: list[int], consumed: int) -> tuple[list[int], int]:
    """Where a round-robin over workers stands after `consumed` batches.

    The DataLoader takes one batch from each worker in turn, passing over exhausted ones. Returns
    how many batches each worker had produced, and the (not exhausted) worker whose turn is next.
    """
    produced = [0] * len(counts)
    turn = 0
    for _ in range(min(consumed, sum(counts))):
        while produced[turn] >= counts[turn]:
            turn = (turn + 1) % len(counts)
        produced[turn] += 1
        turn = (turn + 1) % len(counts)
    if produced != counts:
        while produced[turn] >= counts[turn]:
            turn = (turn + 1) % len(counts)
    return produced, turn
