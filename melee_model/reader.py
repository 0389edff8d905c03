"""Decoding the store's chunks for the data pipeline: a group of chunks at a time, local or remote.

`GroupReader` decodes the frames a group of pieces reads (plus the context frames around them) into
one pool that batches are gathered from. The store itself knows how a chunk is
found and decoded (`Store.read_chunks`); this module decides which chunks and when, and keeps
remote stores fast: from local disk each chunk is a file read, from an object store each is a
request with tens of milliseconds of latency, so all chunks of a group are requested at once
(`ChunkFetcher.fetch`) and the loader fetches the next group while it builds batches from the
current one. A `ChunkCache` keeps their stored bytes on local disk, bounded, so later epochs read a
remote store from disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from melee_encode import Store
from melee_encode.format import part_name
from melee_encode.storage import is_url
from melee_encode.store import ChunkKey
from melee_model.layout import FrameLayout
from melee_model.sampler import Piece

EVICT_TO = 0.8  # an eviction pass brings the cache down to this share of its bound
POOL_SETS = 2  # a group being batched, and the next one being read


class ChunkCache:
    """Compressed chunks of one remote store on local disk, at most `max_bytes`, least recently used
    evicted first.

    Shared by every loader process of a machine: a chunk is written whole under a temporary name
    and renamed into place, and one that another process evicted meanwhile is fetched again. The
    cache is named after the store's URL and creation time, so a store recreated at the same URL
    never meets the chunks of its predecessor.
    """

    def __init__(self, directory: str, store: Store, max_bytes: int):
        identity = f"{store.path}\n{store.attrs.get('created', '')}"
        self.root = os.path.join(os.path.expanduser(directory), hashlib.sha1(identity.encode()).hexdigest()[:16])
        os.makedirs(self.root, exist_ok=True)
        self.max_bytes = max_bytes
        self.used = sum(size for _, _, size in self._entries())

    def get(self, key: ChunkKey) -> np.ndarray | None:
        path = self._path(key)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            os.utime(path)  # used now: evicted last
        except FileNotFoundError:
            return None
        return np.frombuffer(data, np.uint8)

    def put(self, key: ChunkKey, data: np.ndarray) -> None:
        if data.nbytes > self.max_bytes * (1 - EVICT_TO):
            return  # a chunk this large would flush the whole cache
        path = self._path(key)
        staging = f"{path}.{os.getpid()}.tmp"
        with open(staging, "wb") as handle:
            handle.write(memoryview(data))
        os.replace(staging, path)
        self.used += data.nbytes
        if self.used > self.max_bytes:
            self._evict()

    def _evict(self) -> None:
        """Remove the least recently used chunks (of every process) down to EVICT_TO of the bound."""
        entries = sorted(self._entries())
        total = sum(size for _, _, size in entries)
        for _, path, size in entries:
            if total <= self.max_bytes * EVICT_TO:
                break
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            total -= size
        self.used = total

    def _entries(self) -> list[tuple[float, str, int]]:
        """(last use, path, bytes) of every cached chunk."""
        entries = []
        for entry in os.scandir(self.root):
            if entry.name.endswith(".tmp"):
                continue
            with contextlib.suppress(FileNotFoundError):
                stat = entry.stat()
                entries.append((stat.st_mtime, entry.path, stat.st_size))
        return entries

    def _path(self, key: ChunkKey) -> str:
        part, array, c = key
        return os.path.join(self.root, f"{part_name(part)}.{array}.{c}")


class ChunkFetcher:
    """Stored bytes of a store's chunks: from the cache when there, else fetched all at once."""

    def __init__(self, store: Store, cache: ChunkCache | None = None):
        self.store = store
        self.cache = cache

    @classmethod
    def for_store(cls, store: Store, cache_dir: str, cache_mb: int) -> ChunkFetcher:
        """A fetcher with a disk cache of `cache_mb` MB when the store is remote and cache_mb > 0."""
        cache = ChunkCache(cache_dir, store, cache_mb << 20) if is_url(store.path) and cache_mb > 0 else None
        return cls(store, cache)

    def fetch(self, keys: list[ChunkKey]) -> dict[ChunkKey, np.ndarray | None]:
        """Stored bytes of the chunks the store decodes itself (`Store.stored_chunks`); others are left out."""
        found = {}
        if self.cache is not None:
            found = {key: data for key in keys if (data := self.cache.get(key)) is not None}
        fetched = self.store.stored_chunks([key for key in keys if key not in found])
        if self.cache is not None:
            for key, data in fetched.items():
                if data is not None:
                    self.cache.put(key, data)
        return {**found, **fetched}


class GroupReader:
    """Decodes the frames a group of pieces reads, as one frame-major pool or as feature-major blocks.

    Each piece's segment is its items' positions with the `before` and `after` frames they also read;
    every chunk the segments overlap is decoded once per group.
    - frame-major (`frame_major=True`, the card's examples): each chunk's part of every segment is
      copied, transposed, into one (P, columns) pool that per-example gathers read;
    - feature-major (sequence windows): each chunk is decoded in place into one block of a (blocks,
      columns, chunk_frames) array, the store's own layout, with no copy at all; a segment's chunks
      are consecutive blocks, so a window is a run of flat positions.
    Either way `read` returns the pools and, per piece, the flat pool index of part position 0.
    Chunks are decoded by `threads` threads (zstd and the copies release the GIL), each with its own
    buffers. Buffers are allocated once and reused (fresh arrays of this size cost more in page
    faults than the copies); reads alternate between POOL_SETS sets of pools, so a pool stays valid
    while the next group is read (`examples` reads one group ahead).
    """

    def __init__(
        self,
        store: Store,
        layout: FrameLayout,
        before: int,
        after: int,
        frame_major: bool = True,
        fetcher: ChunkFetcher | None = None,
        threads: int = 1,
    ):
        self.store = store
        self.before, self.after = before, after
        self.frame_major = frame_major
        self.fetcher = fetcher or ChunkFetcher(store)
        self.chunk = store.chunk_frames
        self.widths = (layout.n_float, layout.n_int)
        self.pool_sets = [(torch.empty(0), torch.empty(0, dtype=torch.int16)) for _ in range(POOL_SETS)]  # float, int
        self.reads = 0
        self.threads = max(1, threads)
        self.scratch: list[tuple[np.ndarray, np.ndarray]] = []  # per thread: a decoded chunk's float and int buffers
        self.executor = ThreadPoolExecutor(self.threads, thread_name_prefix="melee-decode") if self.threads > 1 else None

    def fetch(self, pieces: list[Piece]) -> dict[ChunkKey, np.ndarray | None]:
        """The stored bytes of the float and int chunks a `read` of `pieces` decodes, all at once."""
        return self.fetcher.fetch([key for part, c in self._chunks(self._segments(pieces)) for key in _keys(part, c)])

    def read(
        self, pieces: list[Piece], fetched: dict[ChunkKey, np.ndarray | None] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(floats, ints, bases): frame-major pools (P, n_float) float32 and (P, n_int) int16, or
        feature-major blocks (blocks, n_float, chunk) and (blocks, n_int, chunk); and per piece the
        flat pool index of part position 0. `fetched`: the group's stored chunks, if fetched ahead."""
        segments = self._segments(pieces)
        fetched = self.fetch(pieces) if fetched is None else fetched
        return self._read_frames(segments, fetched) if self.frame_major else self._read_blocks(segments, fetched)

    def _read_frames(self, segments: list[tuple[int, int, int]], fetched: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        starts = np.concatenate([[0], np.cumsum([hi - lo for _, lo, hi in segments])])  # pool index of each segment's lo
        pools = self._pools((int(starts[-1]), self.widths[0]), (int(starts[-1]), self.widths[1]))
        copies: dict[tuple[int, int], list[tuple[int, int, int]]] = {}  # chunk -> (pool index, a, b) of its frames a..b
        for (part, lo, hi), at in zip(segments, starts.tolist()):
            for c in self._chunks_of(part, lo, hi):
                a, b = max(lo, c * self.chunk), min(hi, (c + 1) * self.chunk)
                copies.setdefault((part, c), []).append((at + a - lo, a - c * self.chunk, b - c * self.chunk))

        def decode_and_copy(thread: int, chunk: tuple[int, int]) -> None:
            decoded = self.store.read_chunks(_keys(*chunk), list(self.scratch[thread]), fetched)  # (columns, chunk) each
            for at, a, b in copies[chunk]:
                for pool, values in zip(pools, decoded):
                    pool[at : at + b - a].copy_(torch.from_numpy(values[:, a:b]).t())  # transposed in the copy

        self._each_chunk(list(copies), decode_and_copy)
        bases = starts[:-1] - np.array([lo for _, lo, _ in segments], dtype=np.int64)  # pool index of position p: bases[k] + p
        return *(pool.numpy() for pool in pools), bases

    def _read_blocks(self, segments: list[tuple[int, int, int]], fetched: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        chunks = self._chunks(segments)
        block_of = {key: k for k, key in enumerate(chunks)}
        blocks = self._pools(*((len(chunks), width, self.chunk) for width in self.widths))

        def decode_in_place(_: int, chunk: tuple[int, int]) -> None:
            k = block_of[chunk]
            self.store.read_chunks(_keys(*chunk), [blocks[0][k].numpy(), blocks[1][k].numpy()], fetched)

        self._each_chunk(chunks, decode_in_place)
        bases = [block_of[(part, lo // self.chunk)] * self.chunk - (lo // self.chunk) * self.chunk for part, lo, _ in segments]
        return *(block.numpy() for block in blocks), np.array(bases, dtype=np.int64)

    def _each_chunk(self, chunks: list[tuple[int, int]], work) -> None:
        """work(thread, chunk) for every chunk, the chunks split into `threads` runs in storage order."""
        while len(self.scratch) < self.threads and self.frame_major:
            self.scratch.append((np.empty((self.widths[0], self.chunk), np.float32), np.empty((self.widths[1], self.chunk), np.int16)))
        runs = [chunks[t :: self.threads] for t in range(self.threads)]

        def run(thread: int) -> None:
            for chunk in runs[thread]:
                work(thread, chunk)

        if self.executor is None:
            run(0)
        else:
            list(self.executor.map(run, range(self.threads)))

    def _segments(self, pieces: list[Piece]) -> list[tuple[int, int, int]]:
        """(part, lo, hi) per piece: the part positions its items read. Past the part's end (a window
        that runs over the last game) the chunks read as their fill value."""
        return [(p.part, max(0, int(p.starts.min()) - self.before), p.last + self.after + 1) for p in pieces]

    def _chunks_of(self, part: int, lo: int, hi: int) -> range:
        return range(lo // self.chunk, (hi - 1) // self.chunk + 1)

    def _chunks(self, segments: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
        """(part, chunk) of every chunk the segments overlap, each once, in storage order."""
        return sorted({(part, c) for part, lo, hi in segments for c in self._chunks_of(part, lo, hi)})

    def _pools(self, float_shape: tuple, int_shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the next set of reused pool buffers with these shapes, grown when too small (by a
        quarter more than asked: groups differ a little in size, and each growth allocates anew)."""
        turn, self.reads = self.reads % POOL_SETS, self.reads + 1
        if self.pool_sets[turn][0].numel() < math.prod(float_shape):
            self.pool_sets[turn] = (torch.empty(0), torch.empty(0, dtype=torch.int16))  # freed before the new one
            grown = (math.prod(float_shape) * 5 // 4, math.prod(int_shape) * 5 // 4)
            self.pool_sets[turn] = (torch.empty(grown[0]), torch.empty(grown[1], dtype=torch.int16))
        pools = self.pool_sets[turn]
        return tuple(pool.view(-1)[: math.prod(shape)].view(shape) for pool, shape in zip(pools, (float_shape, int_shape)))


def _keys(part: int, c: int) -> list[ChunkKey]:
    """The keys of chunk c of a part's float and int arrays (the examples read no state_age)."""
    return [(part, "float", c), (part, "int", c)]
