"""Decoding the store's chunks for the data pipeline: a group of chunks at a time, local or remote.

`GroupReader` decodes the chunks a group of `ChunkTargets` reads (plus the context frames before
them) into frame-major pools that batches are gathered from. The store itself knows how a chunk is
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
import os

import numpy as np
import torch

from melee_encode import Store
from melee_encode.format import part_name
from melee_encode.storage import is_url
from melee_encode.store import ChunkKey
from melee_model.layout import FrameLayout
from melee_model.sampler import ChunkTargets

EVICT_TO = 0.8  # an eviction pass brings the cache down to this share of its bound


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

    def fetch(self, chunks: list[ChunkTargets]) -> dict[ChunkKey, np.ndarray | None]:
        """The stored bytes of the float and int chunks a `read` of `chunks` decodes, all at once."""
        return self.fetcher.fetch([key for part, c in self._chunks(self._segments(chunks)) for key in _keys(part, c)])

    def read(self, chunks: list[ChunkTargets], fetched: dict[ChunkKey, np.ndarray | None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """floats (P, n_float) float32, ints (P, n_int) int16, and per chunk the pool index of part position 0.

        `fetched` holds the group's stored chunks if `fetch` got them already (ahead of time)."""
        segments = self._segments(chunks)
        fetched = self.fetch(chunks) if fetched is None else fetched
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

    def _segments(self, chunks: list[ChunkTargets]) -> list[tuple[int, int, int]]:
        """(part, lo, hi) per chunk: the part positions its examples read, context included."""
        before, after = self.layout.context_len, self.layout.lookahead
        segments = []
        for chunk in chunks:
            start = chunk.chunk * self.chunk
            lo = max(0, min(int(chunk.starts.min()) - before, start))
            hi = min(self.store.parts[chunk.part], max(int(chunk.stops.max()) + after, start + self.chunk))
            segments.append((chunk.part, lo, hi))
        return segments

    def _chunks(self, segments: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
        """(part, chunk) of every chunk the segments overlap, each once, in order."""
        return list(dict.fromkeys((part, c) for part, lo, hi in segments for c in range(lo // self.chunk, (hi - 1) // self.chunk + 1)))

    def _decode(self, part: int, c: int, slot: int, fetched: dict[ChunkKey, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
        """Chunk c of a part's float and int arrays, decoded into buffer `slot`."""
        while len(self.slots) <= slot:
            self.slots.append((np.empty((self.layout.n_float, self.chunk), np.float32), np.empty((self.layout.n_int, self.chunk), np.int16)))
        return tuple(self.store.read_chunks(_keys(part, c), list(self.slots[slot]), fetched))


def _keys(part: int, c: int) -> list[ChunkKey]:
    """The keys of chunk c of a part's float and int arrays (the examples read no state_age)."""
    return [(part, "float", c), (part, "int", c)]
