"""Training examples straight from a melee-encode store: the dataset the trainer and evaluation read.

An `ExampleSource` is a store opened for one experiment: its encoding checked against the config's,
its games selected per split and its pieces planned (`sampler`). `loader(split, epoch, ...)` gives a
DataLoader over one rank's batches of an epoch: each loader worker decodes the groups of pieces its
share of the epoch plan covers (`reader.GroupReader`) and assembles batches from the decoded group
(`batches`; vectorized, no per-example Python). A remote store (an fsspec URL) has a group's chunks
requested all at once, the next group's while the current one is batched.

Each batch is a dict of CPU tensors: for the card objective float_ctx, int_ctx, next_ctrl,
float_tgt, int_tgt (see `layout`); for the sequence objective float_seq, int_seq, target_mask (see
`batches`); and example_id (part << 40 | the item's position), which names it across the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from melee_encode import EncodingConfig, MeleeError, Store, open_store
from melee_model.batches import BatchAssembler
from melee_model.config import DataConfig, ExperimentConfig
from melee_model.layout import FrameLayout, layout_for
from melee_model.reader import ChunkFetcher, GroupReader
from melee_model.sampler import SPLITS, EpochPlan, data_filter, items_of, plan_pieces, round_robin_resume, select_games

PART_SHIFT = 40  # example_id = part << PART_SHIFT | frame position in the part
PREFETCH_FACTOR = 4  # batches each loader worker keeps in flight


class EncodingMismatch(MeleeError, ValueError):
    """The store holds another encoding than the experiment expects."""


def check_encoding(store: Store, expected: EncodingConfig) -> None:
    """Refuse a store whose encoding differs from the config's, naming every differing option."""
    if store.config != expected:
        stored, wanted = store.config.to_dict(), expected.to_dict()
        diff = ", ".join(f"{k}: store has {stored[k]}, config has {wanted[k]}" for k in stored if stored[k] != wanted[k])
        raise EncodingMismatch(f"{store.path} was encoded with other options than the experiment's encoding ({diff})")


class ExampleSource:
    """A store opened for training: encoding checked, games selected per split, chunks planned.

    Built once per run; `loader(split, epoch, ...)` then gives each epoch's DataLoader cheaply.
    """

    def __init__(
        self,
        store: str | Store,
        layout: FrameLayout,
        config: DataConfig,
        encoding: EncodingConfig | None = None,
        storage_options: dict | None = None,
    ):
        """`store`: a path or URL, or a store already opened (with these storage options)."""
        self.storage_options = dict(storage_options or {})
        self.store = store if isinstance(store, Store) else open_store(str(store), self.storage_options)
        self.store_path = self.store.path
        if encoding is not None:
            check_encoding(self.store, encoding)
        self.layout = layout
        self.config = config
        self.items = items_of(config)
        games = self.store.games
        game_filter = data_filter(config, self.store.config, self.items.min_frames)
        self.rows = {split: select_games(games, game_filter, split, config.val_fraction) for split in SPLITS}
        piece_frames = config.piece_frames or self.store.chunk_frames
        self._target_std: dict[int, np.ndarray] = {}  # games sampled -> float_target_std's result (it reads the store)
        items = self.items
        self.pieces = {split: plan_pieces(games, self.rows[split], piece_frames, items.first, items.last, items.stride) for split in SPLITS}

    @classmethod
    def for_experiment(cls, store: str, config: ExperimentConfig, storage_options: dict | None = None) -> ExampleSource:
        """The store opened once, checked against the experiment's encoding (before the layout is
        built, so the error names the differing options), with the experiment's layout and data."""
        opened = open_store(str(store), storage_options)
        check_encoding(opened, config.encoding)
        return cls(opened, layout_for(config, opened.schema), config.data, storage_options=storage_options)

    def example_count(self, split: str) -> int:
        """Items (examples, or windows for the sequence objective) per epoch of a split."""
        return self.pieces[split].total

    def target_count(self, split: str) -> int:
        """Supervised targets per epoch of a split: one per example, or per target position of the windows."""
        if self.config.objective == "last":
            return self.example_count(split)
        return int(np.sum(self.store.games["length"][self.rows[split]] - self.config.warmup - 1))

    def float_target_std(self, games: int = 32) -> np.ndarray:
        """(T,) float32: the standard deviation of each float target (float_tgt order) over the card's
        examples of up to `games` train games (every selected game where the split has none), evenly
        spaced in the table: the same for every run on this store and data config. Delta targets are
        changes over the frames the layout's delta spans. Read once per source and sample size."""
        if games not in self._target_std:
            self._target_std[games] = self._measure_target_std(games)
        return self._target_std[games]

    def _measure_target_std(self, games: int) -> np.ndarray:
        layout, rows = self.layout, self.rows["train"] if len(self.rows["train"]) else self.rows_of("all")
        K, d = layout.context_len, layout.lookahead
        span = d + 1 if layout.lookahead_delta == "from_context" else 1  # t+d minus t-1, or minus t+d-1
        columns, delta = list(layout.float_target_columns), np.array(layout.float_target_is_delta)
        targets = []
        for row in rows[np.unique(np.linspace(0, len(rows) - 1, min(games, len(rows))).astype(int))] if len(rows) else []:
            floats = self.store.read_frames(int(row))[0][:, columns]  # (n, T)
            target = floats[K + d :].copy()  # (n - K - d, T): frame t+d of each example
            target[:, delta] -= floats[K + d - span : len(floats) - span][:, delta]
            targets.append(target)
        if not targets:
            raise MeleeError(f"{self.store_path}: no games to measure the float targets' spread on")
        return np.concatenate(targets).std(axis=0, dtype=np.float64).astype(np.float32)

    def rows_of(self, split: str) -> np.ndarray:
        """Game rows of "train", "val", or "all" (both), in table order."""
        return np.sort(np.concatenate([self.rows[s] for s in (SPLITS if split == "all" else (split,))]))

    def plan(self, split: str, epoch: int, world: int = 1, batch_size: int | None = None) -> EpochPlan:
        return EpochPlan(
            self.pieces[split],
            seed=self.config.seed,
            epoch=epoch,
            shuffle=split == "train",
            pieces_per_group=self.config.pieces_per_group,
            batch_size=batch_size or self.config.batch_size,
            world=world,
            chunk_frames=self.store.chunk_frames,
            chunk_visits=self.config.chunk_visits,
        )

    def loader(
        self,
        split: str,
        epoch: int,
        *,
        rank: int = 0,
        world: int = 1,
        start_batch: int = 0,
        batch_size: int | None = None,
        num_workers: int | None = None,
    ) -> DataLoader:
        """A DataLoader over rank `rank`'s batches of `split` in `epoch` (dicts of CPU tensors)."""
        plan = self.plan(split, epoch, world, batch_size)
        assembler = BatchAssembler(self.layout, self.config)
        dataset = StoreExamples(
            self.store_path,
            assembler,
            plan,
            rank=rank,
            start_batch=start_batch,
            storage_options=self.storage_options,
            cache=(self.config.cache_dir, self.config.cache_mb),
        )
        workers = self.config.num_workers if num_workers is None else num_workers
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=PREFETCH_FACTOR if workers else None,
        )


class StoreExamples(IterableDataset):
    """One rank's batches of an epoch plan, split over the DataLoader's workers; yields dicts of arrays.

    Each batch also carries "example_id" (B,) int64 (part << 40 | the item's position), which names
    the item across the whole store. `start_batch` skips the rank's first batches (resume) without
    decoding them: each worker skips its share of the DataLoader's round-robin. `cache` is the
    (directory, MB) of the disk cache of a remote store's chunks (MB 0: none).
    """

    def __init__(
        self,
        store_path: str,
        assembler: BatchAssembler,
        plan: EpochPlan,
        *,
        rank: int = 0,
        start_batch: int = 0,
        storage_options: dict | None = None,
        cache: tuple[str, int] = ("", 0),
    ):
        self.store_path = store_path
        self.assembler = assembler
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
        items, assembler = self.assembler.items, self.assembler
        fetcher = ChunkFetcher.for_store(store, *self.cache)
        threads = assembler.config.decode_threads
        reader = GroupReader(store, assembler.layout, items.before, items.after, assembler.frame_major, fetcher, threads)
        yield from _batches(self.plan, reader, assembler, start, end, self.plan.batch_size)


def _batches(plan: EpochPlan, reader: GroupReader, assembler: BatchAssembler, start: int, end: int, batch_size: int) -> Iterator[dict]:
    """Batches of stream positions [start, end), decoding only the groups that overlap it.

    A batch that straddles two groups is completed from the next group (`carry`).
    """
    starts = plan.group_starts
    carry = None
    for group, (floats, ints, bases) in zip(groups := plan.groups_in(start, end), _read_ahead(plan, reader, groups)):
        g0, g1 = int(starts[group]), int(starts[group + 1])
        slots, positions, ends = plan.group_items(group)
        take = slice(max(start, g0) - g0, min(end, g1) - g0)
        slots, positions, ends = slots[take], positions[take], ends[take]
        anchors = bases[slots] + positions  # (n,) pool index of each item's position
        parts = plan.pieces.part[plan.groups[group]]
        ids = (parts[slots] << PART_SHIFT) | positions

        def examples(span: slice) -> dict:
            batch = assembler(floats, ints, anchors[span], positions[span], ends[span])
            batch["example_id"] = ids[span]
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


def _read_ahead(plan: EpochPlan, reader: GroupReader, groups: list[int]) -> Iterator[tuple]:
    """Each group's decoded pools in turn, the next group read (fetched and decoded) in a background
    thread while the caller batches the current one: the decoding, and from an object store the
    requests' latency, hide behind the batching. The reader alternates between two sets of pools."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="melee-read-ahead") as ahead:
        read = lambda group: ahead.submit(reader.read, [plan.pieces[p] for p in plan.groups[group]])  # noqa: E731
        upcoming = read(groups[0]) if groups else None
        for i in range(len(groups)):
            pools = upcoming.result()
            if i + 1 < len(groups):
                upcoming = read(groups[i + 1])
            yield pools


def _concat(batches: list[dict]) -> dict:
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
