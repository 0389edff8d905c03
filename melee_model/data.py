"""Training examples straight from a melee-encode store: game selection, epoch plans, batches.

Nothing is loaded into memory up front. An epoch is planned from the per-game table alone:
- games are selected (filters, then a 90/10 train/val split decided per game by its content hash,
  so a game stays on its side when the store grows);
- each chunk of stored frames becomes a *unit* holding the examples whose target frame lies in it;
- units are shuffled (train) and taken `chunks_per_group` at a time; a *group* is decoded whole
  (plus the few frames of context before its chunks) and its examples are shuffled together;
- the resulting example stream is cut into contiguous ranges, one per rank and loader worker, in
  whole batches, so each worker decodes mostly its own chunks.
Batches are assembled by vectorized gathers from the decoded group (no per-example Python).
The store may be remote (an fsspec URL): a group's chunks are then requested all at once, the next
group's while the current one is batched, through an optional bounded disk cache (see `chunks`).

Invariant: the order of an epoch's examples is a pure function of (seed, epoch, the selected games,
the layout and the batching); every example appears exactly once per epoch across all ranks and
workers. Resuming after `start_batch` batches reproduces the rest of the epoch without decoding the
groups already consumed.
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from melee_encode import EncodingConfig, Store, open_store
from melee_encode.encoding import sources_used
from melee_encode.storage import is_url
from melee_encode.store import fields_missing_mask
from melee_encode.tables import character_id, end_method_id, stage_id
from melee_model.chunks import ChunkFetcher, ChunkKey, decode_chunk, fetch_stored, plain_zstd
from melee_model.config import DataConfig, ExperimentConfig
from melee_model.layout import FrameLayout, layout_for

PART_SHIFT = 40  # example_id = part << PART_SHIFT | frame position in the part
PREFETCH_FACTOR = 4  # batches each loader worker keeps in flight
SPLITS = ("train", "val")


class EncodingMismatch(ValueError):
    """The store holds another encoding than the experiment expects."""


def check_encoding(store: Store, expected: EncodingConfig) -> None:
    """Refuse a store whose encoding differs from the config's, naming every differing option."""
    if store.config != expected:
        stored, wanted = store.config.to_dict(), expected.to_dict()
        diff = ", ".join(f"{k}: store has {stored[k]}, config has {wanted[k]}" for k in stored if stored[k] != wanted[k])
        raise EncodingMismatch(f"{store.path} was encoded with other options than the experiment's encoding ({diff})")


def is_validation(hashes: np.ndarray, val_fraction: float) -> np.ndarray:
    """Per game: True for the validation split. Decided by the content hash alone, so stable."""
    position = np.array([int(h[:8], 16) for h in hashes], dtype=np.float64) / 16**8  # uniform in [0, 1)
    return position < val_fraction


def select_games(store: Store, config: DataConfig, split: str, layout: FrameLayout) -> np.ndarray:
    """Rows of the store's game table in `split` that pass the config's filters and hold an example."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    games = store.games
    keep = is_validation(games["hash"], config.val_fraction) == (split == "val")
    keep &= games["length"] >= layout.span
    if config.end_methods:
        keep &= np.isin(games["end_method"], [end_method_id(m) for m in config.end_methods])
    if config.stages:
        keep &= np.isin(games["stage"], [stage_id(s) for s in config.stages])
    if config.characters:
        wanted = [character_id(c) for c in config.characters]
        keep &= np.isin(games["characters"], wanted).any(axis=1)
    if config.require_fields == "used":
        keep &= (games["fields_missing"] & fields_missing_mask(sources_used(store.config))) == 0
    elif config.require_fields != "none":
        raise ValueError(f"data.require_fields must be 'used' or 'none', got {config.require_fields!r}")
    return np.flatnonzero(keep)


@dataclass(frozen=True)
class Unit:
    """The examples whose target frame lies in one stored chunk: target positions in [starts, stops)."""

    part: int
    chunk: int
    starts: np.ndarray  # (pieces,) int64, part coordinates; one piece per game overlapping the chunk
    stops: np.ndarray

    @property
    def count(self) -> int:
        return int((self.stops - self.starts).sum())


def plan_units(store: Store, rows: np.ndarray, layout: FrameLayout) -> list[Unit]:
    """One unit per (part, chunk) holding examples of the selected games, in (part, chunk) order.

    An example is named by its first control frame t: it reads frames t-K .. t+lookahead, so t
    ranges over [offset + K, offset + length - lookahead) of its game.
    """
    chunk = store.chunk_frames
    games = store.games
    part = games["part"][rows].astype(np.int64)
    first = games["offset"][rows].astype(np.int64) + layout.context_len
    end = games["offset"][rows].astype(np.int64) + games["length"][rows] - layout.lookahead
    # Split each game's range of targets at chunk boundaries.
    first_chunk, last_chunk = first // chunk, (end - 1) // chunk
    spans = last_chunk - first_chunk + 1
    game = np.repeat(np.arange(len(rows)), spans)  # (pieces,)
    piece_chunk = np.repeat(first_chunk, spans) + (np.arange(spans.sum()) - np.repeat(np.cumsum(spans) - spans, spans))
    starts = np.maximum(first[game], piece_chunk * chunk)
    stops = np.minimum(end[game], (piece_chunk + 1) * chunk)
    piece_part = part[game]
    order = np.lexsort((starts, piece_chunk, piece_part))
    starts, stops, piece_part, piece_chunk = starts[order], stops[order], piece_part[order], piece_chunk[order]
    units = []
    keys = piece_part * (1 << 32) + piece_chunk
    boundaries = np.flatnonzero(np.diff(keys)) + 1
    for a, b in zip(np.concatenate([[0], boundaries]), np.concatenate([boundaries, [len(keys)]])):
        if b > a:
            units.append(Unit(int(piece_part[a]), int(piece_chunk[a]), starts[a:b], stops[a:b]))
    return units


class EpochPlan:
    """The example stream of one epoch and its split over ranks and loader workers.

    Groups are runs of `chunks_per_group` consecutive units (neighbouring chunks share their edge
    frames, so a run decodes each chunk once plus one chunk before it); for train, the order of the
    groups is shuffled by (seed, epoch) and each group's examples by (seed, epoch, group). The stream
    is the groups in that order. Rank r takes the r-th of `world` near-equal contiguous ranges of
    the stream; inside it, worker w takes a contiguous run of whole batches.
    """

    def __init__(self, units: list[Unit], *, seed: int, epoch: int, shuffle: bool, chunks_per_group: int, batch_size: int, world: int = 1):
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        self.batch_size, self.world = batch_size, world
        self.units = units
        size = max(1, chunks_per_group)
        runs = [np.arange(a, min(a + size, len(units))) for a in range(0, len(units), size)]
        order = np.random.default_rng([seed, epoch]).permutation(len(runs)) if shuffle else np.arange(len(runs))
        self.groups = [runs[g] for g in order]  # unit indices of each group, in stream order
        counts = np.array([u.count for u in units], dtype=np.int64)
        group_counts = np.array([counts[g].sum() for g in self.groups], dtype=np.int64)
        self.group_starts = np.concatenate([[0], np.cumsum(group_counts)]).astype(np.int64)  # stream offset of each group
        self.total = int(self.group_starts[-1])
        self.rank_starts = [self.total * r // world for r in range(world + 1)]

    def rank_batches(self, rank: int) -> int:
        """Batches rank `rank` gets this epoch (ranks differ by at most one)."""
        return math.ceil((self.rank_starts[rank + 1] - self.rank_starts[rank]) / self.batch_size)

    @property
    def steps(self) -> int:
        """Batches per rank and epoch: every rank runs this many steps (see EmptyBatch)."""
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
        """(unit index within the group, target position) of the group's examples, in stream order."""
        unit_ids, positions = [], []
        for k, u in enumerate(self.groups[group]):
            unit = self.units[u]
            lengths = unit.stops - unit.starts
            within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            positions.append(np.repeat(unit.starts, lengths) + within)
            unit_ids.append(np.full(int(lengths.sum()), k))
        unit_ids, positions = np.concatenate(unit_ids), np.concatenate(positions)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, int(group)]).permutation(len(positions))
            unit_ids, positions = unit_ids[order], positions[order]
        return unit_ids, positions


class GroupReader:
    """Decodes a group's chunks (with the context frames around them) into frame-major pools.

    Buffers are allocated once and reused: fresh arrays of this size cost more in page faults than
    the copies themselves. A returned pool is valid until the next `read`.
    """

    def __init__(self, store: Store, layout: FrameLayout, fetcher: ChunkFetcher | None = None):
        self.store = store
        self.layout = layout
        self.fetcher = fetcher or ChunkFetcher(store)
        self.chunk = store.chunk_frames
        self.floats = torch.empty(0, layout.n_float)  # the pools, frame-major
        self.ints = torch.empty(0, layout.n_int, dtype=torch.int16)
        self.slots: list[tuple[np.ndarray, np.ndarray]] = []  # decoded chunks, feature-major

    def fetch(self, units: list[Unit]) -> dict[ChunkKey, np.ndarray | None]:
        """The stored bytes of the float and int chunks a `read` of `units` decodes, all at once."""
        return self.fetcher.fetch([(part, array, c) for part, c in self._chunks(self._segments(units)) for array in (0, 1)])

    def read(self, units: list[Unit], fetched: dict[ChunkKey, np.ndarray | None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """floats (P, n_float) float32, ints (P, n_int) int16, and per unit the pool index of part position 0.

        `fetched` holds the group's stored chunks if `fetch` got them already (ahead of time)."""
        segments = self._segments(units)
        fetched = self.fetch(units) if fetched is None else fetched
        decoded = {key: self._decode(*key, slot, fetched) for slot, key in enumerate(self._chunks(segments))}  # each chunk once
        size = sum(hi - lo for _, lo, hi in segments)
        if size > len(self.floats):
            self.floats = torch.empty(size, self.layout.n_float)
            self.ints = torch.empty(size, self.layout.n_int, dtype=torch.int16)
        bases, at = [], 0
        for part, lo, hi in segments:
            bases.append(at - lo)  # pool index of part position p is bases[k] + p
            for c in range(lo // self.chunk, (hi - 1) // self.chunk + 1):
                floats, ints = decoded[(part, c)]  # (n_float, frames), (n_int, frames)
                a, b = max(lo, c * self.chunk) - c * self.chunk, min(hi, (c + 1) * self.chunk) - c * self.chunk
                self.floats[at : at + b - a].copy_(torch.from_numpy(floats[:, a:b]).t())  # transposed in the copy
                self.ints[at : at + b - a].copy_(torch.from_numpy(ints[:, a:b]).t())
                at += b - a
        return self.floats[:size].numpy(), self.ints[:size].numpy(), np.array(bases, dtype=np.int64)

    def _segments(self, units: list[Unit]) -> list[tuple[int, int, int]]:
        """(part, lo, hi) per unit: the part positions its examples read, context included."""
        before, after = self.layout.context_len, self.layout.lookahead
        segments = []
        for unit in units:
            start = unit.chunk * self.chunk
            lo = max(0, min(int(unit.starts.min()) - before, start))
            hi = min(self.store.parts[unit.part], max(int(unit.stops.max()) + after, start + self.chunk))
            segments.append((unit.part, lo, hi))
        return segments

    def _chunks(self, segments: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
        """(part, chunk) of every chunk the segments overlap, each once, in order."""
        return list(dict.fromkeys((part, c) for part, lo, hi in segments for c in range(lo // self.chunk, (hi - 1) // self.chunk + 1)))

    def _decode(self, part: int, c: int, slot: int, fetched: dict[ChunkKey, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
        """Chunk c of a part's float and int arrays, decoded into buffer `slot`."""
        while len(self.slots) <= slot:
            self.slots.append((np.empty((self.layout.n_float, self.chunk), np.float32), np.empty((self.layout.n_int, self.chunk), np.int16)))
        arrays = self.store.part_arrays(part)[:2]
        return tuple(
            decode_chunk(array, fetched[(part, k, c)], out) if (part, k, c) in fetched else read_chunk_zarr(array, c, out)
            for k, (array, out) in enumerate(zip(arrays, self.slots[slot]))
        )


def read_chunk(array: zarr.Array, c: int, out: np.ndarray) -> np.ndarray:
    """Chunk c of a (columns, frames) array, decoded into `out` (columns, chunk) and returned.

    Fast path: the stored chunk is zstd over little-endian bytes (what melee-encode writes), so its
    bytes are fetched and decompressed straight into `out`, skipping zarr's selection machinery
    (2-3x slower for whole chunks). Any other codec chain goes through `read_chunk_zarr`, the
    reference twin the tests compare with.
    """
    if not plain_zstd(array):
        return read_chunk_zarr(array, c, out)
    [stored] = fetch_stored([(array, c)])
    return decode_chunk(array, stored, out)


def read_chunk_zarr(array: zarr.Array, c: int, out: np.ndarray) -> np.ndarray:
    """The reference twin of `read_chunk`: the same chunk through zarr's own read path."""
    chunk = out.shape[1]
    values = array[:, c * chunk : (c + 1) * chunk]
    out[:, : values.shape[1]] = values
    out[:, values.shape[1] :] = array.metadata.fill_value
    return out


def build_batch(floats: np.ndarray, ints: np.ndarray, anchors: np.ndarray, layout: FrameLayout) -> dict[str, np.ndarray]:
    """Examples for the given anchors (pool index of each example's first control frame t).

    floats (P, n_float), ints (P, n_int), anchors (B,) -> float_ctx (B, K, n_float) float32,
    int_ctx (B, K, n_int) int16, next_ctrl (B, ctrl_dim) float32, float_tgt (B, T) float32,
    int_tgt (B, int_target_dim) int16. The layout's docstring defines each part.
    """
    K, d = layout.context_len, layout.lookahead
    rows = anchors[:, None] + np.arange(-K, 0)  # (B, K)
    # mode="clip": every index is valid, and "raise" would buffer the whole output once more.
    float_ctx = np.take(floats, rows.ravel(), axis=0, mode="clip").reshape(len(anchors), K, -1)  # (B, K, F)
    int_ctx = np.take(ints, rows.ravel(), axis=0, mode="clip").reshape(len(anchors), K, -1)  # (B, K, I)
    now = np.take(floats, anchors, axis=0, mode="clip")  # (B, F): frame t
    controls = []
    for j in range(d + 1):
        frame = now if j == 0 else np.take(floats, anchors + j, axis=0, mode="clip")  # (B, F): frame t+j
        controls.append(frame[:, layout.ctrl_columns])  # (B, 26)
        if layout.press_events:
            before = float_ctx[:, -1] if j == 0 else controls_frame
            pressed = (frame[:, layout.button_columns] > 0.5) & (before[:, layout.button_columns] <= 0.5)  # (B, 16)
            controls.append(pressed.astype(np.float32))
        controls_frame = frame
    target = controls_frame  # (B, F): frame t+d
    float_tgt = target[:, layout.float_target_columns]  # (B, T)
    float_tgt[:, layout.delta_target_positions] -= float_ctx[:, -1][:, layout.delta_target_columns]  # from frame t-1
    return {
        "float_ctx": float_ctx,
        "int_ctx": int_ctx,
        "next_ctrl": np.concatenate(controls, axis=1),  # (B, ctrl_dim)
        "float_tgt": float_tgt,
        "int_tgt": np.take(ints, anchors + d, axis=0, mode="clip")[:, layout.int_target_columns],  # (B, 12)
    }


class ExampleSource:
    """A store opened for training: encoding checked, games selected per split, chunks planned.

    Built once per run; `loader(split, epoch, ...)` then gives each epoch's DataLoader cheaply.
    """

    def __init__(self, store: str | Store, layout: FrameLayout, config: DataConfig, encoding: EncodingConfig | None = None, storage_options: dict | None = None):
        """`store`: a path or URL, or a store already opened (with these storage options)."""
        self.storage_options = dict(storage_options or {})
        self.store = store if isinstance(store, Store) else open_store(str(store), self.storage_options)
        self.store_path = self.store.path
        if encoding is not None:
            check_encoding(self.store, encoding)
        self.layout = layout
        self.config = config
        self.rows = {split: select_games(self.store, config, split, layout) for split in SPLITS}
        self.units = {split: plan_units(self.store, self.rows[split], layout) for split in SPLITS}

    @classmethod
    def for_experiment(cls, store: str, config: ExperimentConfig, storage_options: dict | None = None) -> "ExampleSource":
        """The store opened once, checked against the experiment's encoding (before the layout is
        built, so the error names the differing options), with the experiment's layout and data."""
        opened = open_store(str(store), storage_options)
        check_encoding(opened, config.encoding)
        return cls(opened, layout_for(config, opened.schema), config.data, storage_options=storage_options)

    def examples(self, split: str) -> int:
        return sum(u.count for u in self.units[split])

    def rows_of(self, split: str) -> np.ndarray:
        """Game rows of "train", "val", or "all" (both), in table order."""
        return np.sort(np.concatenate([self.rows[s] for s in (SPLITS if split == "all" else (split,))]))

    def plan(self, split: str, epoch: int, world: int = 1, batch_size: int | None = None) -> EpochPlan:
        return EpochPlan(
            self.units[split],
            seed=self.config.seed,
            epoch=epoch,
            shuffle=split == "train",
            chunks_per_group=self.config.chunks_per_group,
            batch_size=batch_size or self.config.batch_size,
            world=world,
        )

    def loader(self, split: str, epoch: int, *, rank: int = 0, world: int = 1, start_batch: int = 0, batch_size: int | None = None, num_workers: int | None = None) -> DataLoader:
        """A DataLoader over rank `rank`'s batches of `split` in `epoch` (dicts of CPU tensors)."""
        plan = self.plan(split, epoch, world, batch_size)
        dataset = StoreExamples(self.store_path, self.layout, plan, rank=rank, start_batch=start_batch, storage_options=self.storage_options, cache=(self.config.cache_dir, self.config.cache_mb))
        workers = self.config.num_workers if num_workers is None else num_workers
        return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available(), prefetch_factor=PREFETCH_FACTOR if workers else None)


class StoreExamples(IterableDataset):
    """One rank's batches of an epoch plan, split over the DataLoader's workers; yields dicts of arrays.

    Each batch also carries "example_id" (B,) int64 (part << 40 | target frame), which names the
    example across the whole store. `start_batch` skips the rank's first batches (resume) without
    decoding them: each worker skips its share of the DataLoader's round-robin. `cache` is the
    (directory, MB) of the disk cache of a remote store's chunks (MB 0: none).
    """

    def __init__(self, store_path: str, layout: FrameLayout, plan: EpochPlan, *, rank: int = 0, start_batch: int = 0, storage_options: dict | None = None, cache: tuple[str, int] = ("", 0)):
        self.store_path = store_path
        self.layout = layout
        self.plan = plan
        self.rank = rank
        self.start_batch = start_batch
        self.storage_options = storage_options
        self.cache = cache

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        info = get_worker_info()
        loader_worker, workers = (info.id, info.num_workers) if info else (0, 1)
        ranges = self.plan.worker_batches(self.rank, workers)
        produced, turn = round_robin_resume([b - a for a, b in ranges], self.start_batch)
        # The DataLoader starts its round-robin at its worker 0: that one plays the worker whose
        # turn is next, so the resumed order continues the interrupted one.
        worker = (turn + loader_worker) % workers
        first, stop = ranges[worker]
        first += produced[worker]
        if first >= stop:
            return
        start, end = self.plan.stream_range(self.rank, first, stop)
        store = open_store(self.store_path, self.storage_options)
        reader = GroupReader(store, self.layout, ChunkFetcher.for_store(store, *self.cache))
        yield from _batches(self.plan, reader, self.layout, start, end, self.plan.batch_size)


def _batches(plan: EpochPlan, reader: GroupReader, layout: FrameLayout, start: int, end: int, batch_size: int) -> Iterator[dict]:
    """Batches of stream positions [start, end), decoding only the groups that overlap it.

    A batch that straddles two groups is completed from the next group (`carry`).
    """
    starts = plan.group_starts
    groups = [g for g in range(len(plan.groups)) if starts[g + 1] > max(start, starts[g]) and starts[g] < end]
    fetches = _prefetched(plan, reader, groups) if is_url(reader.store.path) else itertools.repeat(None)
    carry = None
    for group, fetched in zip(groups, fetches):
        g0, g1 = int(starts[group]), int(starts[group + 1])
        unit_ids, positions = plan.group_examples(group)
        take = slice(max(start, g0) - g0, min(end, g1) - g0)
        unit_ids, positions = unit_ids[take], positions[take]
        units = [plan.units[u] for u in plan.groups[group]]
        floats, ints, bases = reader.read(units, fetched)
        anchors = bases[unit_ids] + positions  # (n,) pool index of each example's first control frame
        ids = (np.array([u.part for u in units], dtype=np.int64)[unit_ids] << PART_SHIFT) | positions

        def examples(piece: slice) -> dict:
            batch = build_batch(floats, ints, anchors[piece], layout)
            batch["example_id"] = ids[piece]
            return batch

        first = 0
        if carry is not None:
            first = min(batch_size - len(carry["example_id"]), len(anchors))
            carry = _concat([carry, examples(slice(0, first))])
            if len(carry["example_id"]) == batch_size:
                yield carry
                carry = None
        for a in range(first, len(anchors), batch_size):
            batch = examples(slice(a, a + batch_size))
            if len(batch["example_id"]) == batch_size:
                yield batch
            else:
                carry = batch
    if carry is not None:
        yield carry


def _prefetched(plan: EpochPlan, reader: GroupReader, groups: list[int]) -> Iterator[dict]:
    """The stored chunks of each group in turn, the next group's fetched in a background thread
    while the caller batches the current one: from an object store, the requests' latency hides
    behind the work. (From local disk there is nothing worth hiding.)"""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="melee-prefetch") as prefetcher:
        fetch = lambda group: prefetcher.submit(reader.fetch, [plan.units[u] for u in plan.groups[group]])  # noqa: E731
        upcoming = fetch(groups[0]) if groups else None
        for i in range(len(groups)):
            fetched = upcoming.result()
            if i + 1 < len(groups):
                upcoming = fetch(groups[i + 1])
            yield fetched


def _concat(batches: list[dict]) -> dict:
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


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
