"""Training examples straight from a melee-encode store: the dataset the trainer and evaluation read.

An `ExampleSource` is a store opened for one experiment: its encoding checked against the config's,
its games selected per split and its chunks planned (`sampler`). `loader(split, epoch, ...)` gives a
DataLoader over one rank's batches of an epoch: each loader worker decodes the groups of chunks its
share of the epoch plan covers (`reader.GroupReader`) and assembles batches by vectorized gathers
from the decoded group (`build_batch`; no per-example Python). A remote store (an fsspec URL) has a
group's chunks requested all at once, the next group's while the current one is batched.

Each batch is a dict of CPU tensors: float_ctx, int_ctx, next_ctrl, float_tgt, int_tgt (see
`layout`) and example_id (part << 40 | target frame), which names the example across the store.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from melee_encode import EncodingConfig, MeleeError, Store, open_store
from melee_encode.storage import is_url
from melee_model.config import DataConfig, ExperimentConfig
from melee_model.layout import FrameLayout, layout_for
from melee_model.reader import ChunkFetcher, GroupReader
from melee_model.sampler import SPLITS, EpochPlan, data_filter, plan_chunk_targets, round_robin_resume, select_games

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
    controls, frame = [], float_ctx[:, -1]  # (B, F): frame t-1
    for j in range(d + 1):
        before, frame = frame, np.take(floats, anchors + j, axis=0, mode="clip")  # (B, F): frames t+j-1, t+j
        controls.append(frame[:, layout.ctrl_columns])  # (B, 26)
        if layout.press_events:
            pressed = (frame[:, layout.button_columns] > 0.5) & (before[:, layout.button_columns] <= 0.5)  # (B, 16)
            controls.append(pressed.astype(np.float32))
    target = frame  # (B, F): frame t+d
    base = float_ctx[:, -1] if layout.lookahead_delta == "from_context" else before  # (B, F): frame t-1, or t+d-1
    float_tgt = target[:, layout.float_target_columns]  # (B, T)
    float_tgt[:, layout.delta_target_positions] -= base[:, layout.delta_target_columns]
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
        game_filter = data_filter(config, self.store.config, layout.span)
        games = self.store.games
        self.rows = {split: select_games(games, game_filter, split, config.val_fraction) for split in SPLITS}
        self.chunks = {split: plan_chunk_targets(games, self.rows[split], self.store.chunk_frames, layout.context_len, layout.lookahead) for split in SPLITS}

    @classmethod
    def for_experiment(cls, store: str, config: ExperimentConfig, storage_options: dict | None = None) -> ExampleSource:
        """The store opened once, checked against the experiment's encoding (before the layout is
        built, so the error names the differing options), with the experiment's layout and data."""
        opened = open_store(str(store), storage_options)
        check_encoding(opened, config.encoding)
        return cls(opened, layout_for(config, opened.schema), config.data, storage_options=storage_options)

    def example_count(self, split: str) -> int:
        return sum(c.count for c in self.chunks[split])

    def rows_of(self, split: str) -> np.ndarray:
        """Game rows of "train", "val", or "all" (both), in table order."""
        return np.sort(np.concatenate([self.rows[s] for s in (SPLITS if split == "all" else (split,))]))

    def plan(self, split: str, epoch: int, world: int = 1, batch_size: int | None = None) -> EpochPlan:
        return EpochPlan(
            self.chunks[split],
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
    groups = plan.groups_in(start, end)
    fetches = _prefetched(plan, reader, groups) if is_url(reader.store.path) else itertools.repeat(None)
    carry = None
    for group, fetched in zip(groups, fetches):
        g0, g1 = int(starts[group]), int(starts[group + 1])
        chunk_ids, positions = plan.group_examples(group)
        take = slice(max(start, g0) - g0, min(end, g1) - g0)
        chunk_ids, positions = chunk_ids[take], positions[take]
        chunks = [plan.chunks[c] for c in plan.groups[group]]
        floats, ints, bases = reader.read(chunks, fetched)
        anchors = bases[chunk_ids] + positions  # (n,) pool index of each example's first control frame
        ids = (np.array([c.part for c in chunks], dtype=np.int64)[chunk_ids] << PART_SHIFT) | positions

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
        fetch = lambda group: prefetcher.submit(reader.fetch, [plan.chunks[c] for c in plan.groups[group]])  # noqa: E731
        upcoming = fetch(groups[0]) if groups else None
        for i in range(len(groups)):
            fetched = upcoming.result()
            if i + 1 < len(groups):
                upcoming = fetch(groups[i + 1])
            yield fetched


def _concat(batches: list[dict]) -> dict:
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def batch_to_device(batch: dict, device: torch.device) -> dict:
    """Move a loader batch to the device; int columns become int64 there (the loader ships int16)."""
    moved = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        moved[key] = value.long() if key in ("int_ctx", "int_tgt") else value
    return moved
