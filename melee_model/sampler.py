"""Which examples an epoch holds, in which order, and which rank and loader worker produces each.

Everything here is index arithmetic over the per-game table (numpy only: no store, no torch):
- games are selected (the data config's `GameFilter`, then a 90/10 train/val split decided per
  match: by the game's `match_id` where the replay gave one, so that both players' uploads of one
  netplay match land on the same side, else by its content hash; either way a game stays on its
  side when the store grows);
- a game's *items* are the examples it holds: for the card objective one per target frame t (it
  reads frames t-K .. t+lookahead), for the sequence objective one per window of seq_len + 1 frames
  (windows tile the game, seq_len - warmup apart). Items are named by their first position;
- a store part is cut into *pieces* of `piece_frames` positions, and the items whose position lies in
  one piece form a `Piece`: the unit the loader decodes (whole chunks are decoded, so a piece is
  cheapest when it is a whole chunk, and mixes best when it is small);
- an `EpochPlan` draws the train pieces in a random order, takes them `pieces_per_group` at a time as
  groups whose items are shuffled together, so every batch mixes games from all over the store, and
  cuts the resulting stream into contiguous ranges, one per rank and loader worker, in whole batches.
  With `chunk_visits` > 0 the drawn pieces are first dealt into hands, a few pieces of one stored
  chunk each (`deal_by_chunk`), so that a group decodes a chunk for several of its pieces.

Invariant: the order of an epoch's items is a pure function of (seed, epoch, the selected games, the
objective and the batching); every item appears exactly once per epoch across all ranks and workers.
`round_robin_resume` says where each worker stands after a number of batches, so a resumed epoch
continues without producing the consumed batches again.
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


@dataclass(frozen=True)
class Items:
    """Where a game's items lie and what each reads: items at offset + first, + stride, ... before
    offset + length - last; an item at position p reads positions p - before .. p + after."""

    first: int
    last: int
    stride: int
    before: int
    after: int

    @property
    def min_frames(self) -> int:
        """The shortest game that holds an item."""
        return self.first + self.last + 1


def items_of(config: DataConfig) -> Items:
    """The items of a data config's objective (see the module docstring)."""
    if config.objective == "last":
        K, d = config.context_len, config.lookahead
        return Items(first=K, last=d, stride=1, before=K, after=d)
    if config.objective == "sequence":
        L, W = config.seq_len, config.warmup
        if not 0 <= W < L:
            raise ConfigError(f"data.warmup must be in [0, data.seq_len), got warmup {W}, seq_len {L}")
        if config.lookahead:
            raise ConfigError("the sequence objective predicts one frame ahead: data.lookahead must be 0")
        return Items(first=0, last=W + 1, stride=L - W, before=0, after=L)
    raise ConfigError(f"data.objective must be 'last' or 'sequence', got {config.objective!r}")


def data_filter(config: DataConfig, encoding: EncodingConfig, span: int) -> GameFilter:
    """The load-time filter of a data config: its names resolved to ids, games of at least `span`
    frames (one item), and with `require_fields: used` every replay field the encoding reads."""
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
class Piece:
    """The items whose position lies in one piece of a part: positions starts[i], starts[i] + stride,
    ... < stops[i]; range i lies inside one game, which ends at position ends[i] (exclusive)."""

    part: int
    index: int  # the piece's positions are [index * piece_frames, (index + 1) * piece_frames)
    starts: np.ndarray  # (ranges,) int64, part positions
    stops: np.ndarray
    ends: np.ndarray
    stride: int = 1

    @property
    def counts(self) -> np.ndarray:
        """(ranges,) int64: items per range."""
        return -(-(self.stops - self.starts) // self.stride)

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    @property
    def last(self) -> int:
        """The position of the last item."""
        return int((self.starts + (self.counts - 1) * self.stride).max())

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions, game ends) of every item, in position order: two (count,) int64 arrays."""
        counts = self.counts
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.repeat(self.starts, counts) + within * self.stride, np.repeat(self.ends, counts)


@dataclass(frozen=True, eq=False)
class Pieces:
    """Every piece of a split as flat arrays: piece i is part[i], index[i], and its ranges
    bounds[i] .. bounds[i + 1] - 1 of starts, stops, ends. A few bytes per range, where a Piece
    object per piece took ~800 (300 MB at 65,000 games, in every loader process); pieces[i] builds
    piece i's `Piece`."""

    part: np.ndarray  # (P,) int64
    index: np.ndarray  # (P,) int64
    bounds: np.ndarray  # (P + 1,) int64
    starts: np.ndarray  # (R,) int64, part positions
    stops: np.ndarray  # (R,)
    ends: np.ndarray  # (R,)
    stride: int
    counts: np.ndarray  # (P,) int64: items per piece
    piece_frames: int

    def __len__(self) -> int:
        return len(self.part)

    def __getitem__(self, i: int) -> Piece:
        a, b = self.bounds[i], self.bounds[i + 1]
        return Piece(int(self.part[i]), int(self.index[i]), self.starts[a:b], self.stops[a:b], self.ends[a:b], self.stride)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def total(self) -> int:
        """Items in all pieces."""
        return int(self.counts.sum())


def plan_pieces(games: Table, rows: np.ndarray, piece_frames: int, first: int, last: int, stride: int = 1) -> Pieces:
    """The pieces holding the items of the selected games, in (part, piece) order.

    A game at [offset, offset + length) has items at offset + first, offset + first + stride, ...
    before offset + length - last; games with none are left out. Card objective: first = K,
    last = lookahead, stride 1 (one item per target frame). Sequence objective: first = 0,
    last = warmup + 1, stride = seq_len - warmup (the windows that hold a target).
    """
    offset = games["offset"][rows].astype(np.int64)
    end = offset + games["length"][rows]
    a, b = offset + first, end - last  # (games,): the items' positions lie in [a, b)
    has = b > a
    part, a, b, end = games["part"][rows][has].astype(np.int64), a[has], b[has], end[has]
    first_piece, last_piece = a // piece_frames, (b - 1) // piece_frames
    spans = last_piece - first_piece + 1
    game = np.repeat(np.arange(len(a)), spans)  # (ranges,)
    piece = np.repeat(first_piece, spans) + (np.arange(spans.sum()) - np.repeat(np.cumsum(spans) - spans, spans))
    lo = np.maximum(a[game], piece * piece_frames)
    lo = a[game] + -(-(lo - a[game]) // stride) * stride  # on the game's lattice of item positions
    hi = np.minimum(b[game], (piece + 1) * piece_frames)
    keep = lo < hi
    lo, hi, ends, piece, piece_part = lo[keep], hi[keep], end[game][keep], piece[keep], part[game][keep]
    order = np.lexsort((lo, piece, piece_part))
    lo, hi, ends, piece, piece_part = lo[order], hi[order], ends[order], piece[order], piece_part[order]
    keys = piece_part * (1 << 32) + piece
    heads = np.flatnonzero(np.diff(keys, prepend=-1))  # (pieces,): each piece's first range
    counts = np.add.reduceat(-(-(hi - lo) // stride), heads) if len(heads) else np.zeros(0, np.int64)  # (pieces,)
    bounds = np.append(heads, len(keys))
    return Pieces(piece_part[heads], piece[heads], bounds, lo, hi, ends, stride, counts.astype(np.int64), piece_frames)


class EpochPlan:
    """The item stream of one epoch and its split over ranks and loader workers.

    For train, the pieces are drawn in a random order by (seed, epoch) (dealt into hands by stored
    chunk when `chunk_visits` > 0 and `chunk_frames` holds several pieces) and taken
    `pieces_per_group` at a time; each group's items are shuffled together by (seed, epoch, group). For validation, pieces
    stay in table order and items in position order. The stream is the groups in turn. Rank r takes
    the r-th of `world` near-equal contiguous ranges of the stream; inside it, worker w takes a
    contiguous run of whole batches.
    """

    def __init__(
        self,
        pieces: Pieces,
        *,
        seed: int,
        epoch: int,
        shuffle: bool,
        pieces_per_group: int,
        batch_size: int,
        world: int = 1,
        chunk_frames: int = 0,
        chunk_visits: int = 0,
    ):
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        self.batch_size, self.world = batch_size, world
        self.pieces = pieces
        order = np.arange(len(pieces))
        if shuffle:
            rng = np.random.default_rng([seed, epoch])
            order = rng.permutation(len(pieces))
            if chunk_visits > 0 and chunk_frames > pieces.piece_frames:  # several pieces share a chunk
                chunks = pieces.part * (1 << 32) + pieces.index * pieces.piece_frames // chunk_frames  # (P,) the chunk each starts in
                order = deal_by_chunk(order, chunks, chunk_visits, rng)
        size = max(1, pieces_per_group)
        # Sorted inside a group: its chunks are then decoded in storage order (the stream does not care).
        self.groups = [np.sort(order[a : a + size]) for a in range(0, len(pieces), size)]  # piece indices of each group
        group_counts = np.array([pieces.counts[g].sum() for g in self.groups], dtype=np.int64)
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

    def group_items(self, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(piece slot within the group, position, game end) of the group's items, in stream order."""
        slots, positions, ends = [], [], []
        for k, p in enumerate(self.groups[group]):
            where, end = self.pieces[p].items()
            positions.append(where)
            ends.append(end)
            slots.append(np.full(len(where), k))
        slots, positions, ends = np.concatenate(slots), np.concatenate(positions), np.concatenate(ends)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, int(group)]).permutation(len(positions))
            slots, positions, ends = slots[order], positions[order], ends[order]
        return slots, positions, ends

    def groups_in(self, start: int, end: int) -> list[int]:
        """The groups whose items overlap stream positions [start, end), in stream order."""
        starts = self.group_starts
        return [g for g in range(len(self.groups)) if starts[g + 1] > max(start, starts[g]) and starts[g] < end]


def deal_by_chunk(order: np.ndarray, chunks: np.ndarray, visits: int, rng: np.random.Generator) -> np.ndarray:
    """The drawn piece order regrouped into hands: each chunk's pieces, in drawn order, are dealt
    round-robin into `visits` hands; the hands come in a random order, each hand's pieces together.

    A group then decodes each chunk it reads once for several of its pieces: an epoch decodes a
    chunk about `visits` times, where pieces drawn one by one decode it up to once per piece.
    order (P,) a permutation of the pieces; chunks (P,) int64 each piece's chunk key -> (P,) a permutation.
    """
    keys = chunks[order]  # (P,) in drawn order
    by_chunk = np.argsort(keys, kind="stable")  # drawn order kept within a chunk
    sorted_keys = keys[by_chunk]
    new_chunk = np.diff(sorted_keys, prepend=sorted_keys[:1] - 1) != 0  # (P,) the first piece of each chunk
    run_starts = np.flatnonzero(new_chunk)  # (chunks,)
    dense = np.cumsum(new_chunk) - 1  # (P,) dense chunk number, sorted
    rank = np.arange(len(keys)) - run_starts[dense]  # (P,) place of a piece among its chunk's, drawn order
    hand = np.empty(len(keys), dtype=np.int64)
    hand[by_chunk] = dense * visits + rank % visits  # (P,) in drawn order
    hand_rank = rng.permutation(len(run_starts) * visits)  # a random order of every (chunk, visit)
    return order[np.lexsort((np.arange(len(keys)), hand_rank[hand]))]


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
