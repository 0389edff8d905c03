"""Stored chunks of a store's part arrays: fetched many at once, and cached on local disk when remote.

The data pipeline decodes a group of chunks at a time. From local disk each chunk is a file read;
from an object store each is a request with tens of milliseconds of latency, so all chunks of a
group are requested at once (`ChunkFetcher.fetch`: one round of concurrent GETs) and the loader
fetches the next group while it builds batches from the current one. A `ChunkCache` keeps the
compressed bytes on local disk, bounded, so later epochs read a remote store from disk.

Only chunks stored as zstd over little-endian bytes (what melee-encode writes) take this path; the
bytes are decompressed straight into the caller's buffer (`decode_chunk`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys

import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.codecs.bytes import Endian
from zarr.core.buffer import default_buffer_prototype

from melee_encode.storage import gather, is_url
from melee_encode.store import ARRAYS, Store, part_name

EVICT_TO = 0.8  # an eviction pass brings the cache down to this share of its bound
_ZSTD = Zstd()

ChunkKey = tuple[int, int, int]  # (part, array index in ARRAYS, chunk along frames)


def plain_zstd(array: zarr.Array) -> bool:
    """True if the array's chunks are zstd over little-endian bytes, decodable by `decode_chunk`."""
    codecs = array.metadata.codecs
    little_endian = len(codecs) == 2 and isinstance(codecs[0], BytesCodec) and codecs[0].endian in (None, Endian.little)
    return little_endian and isinstance(codecs[1], ZstdCodec) and sys.byteorder == "little"


def fetch_stored(requests: list[tuple[zarr.Array, int]]) -> list[np.ndarray | None]:
    """The stored (compressed) bytes of chunk c of each (array, c), all requested at once; None for
    a chunk never written."""

    async def get(array: zarr.Array, c: int):
        return await (array.store_path / array.metadata.encode_chunk_key((0, c))).get(prototype=default_buffer_prototype())

    return [None if stored is None else stored.as_numpy_array() for stored in gather(*(get(array, c) for array, c in requests))]


def decode_chunk(array: zarr.Array, stored: np.ndarray | None, out: np.ndarray) -> np.ndarray:
    """Stored bytes of one chunk of a plain-zstd array, decompressed into `out` (columns, chunk)."""
    if stored is None:  # never written: the fill value
        out[:] = array.metadata.fill_value
    else:
        _ZSTD.decode(stored, out=out)
    return out


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
        return os.path.join(self.root, f"{part_name(part)}.{ARRAYS[array]}.{c}")


class ChunkFetcher:
    """Stored bytes of a store's chunks: from the cache when there, else fetched all at once."""

    def __init__(self, store: Store, cache: ChunkCache | None = None):
        self.store = store
        self.cache = cache

    @classmethod
    def for_store(cls, store: Store, cache_dir: str, cache_mb: int) -> "ChunkFetcher":
        """A fetcher with a disk cache of `cache_mb` MB when the store is remote and cache_mb > 0."""
        cache = ChunkCache(cache_dir, store, cache_mb << 20) if is_url(store.path) and cache_mb > 0 else None
        return cls(store, cache)

    def fetch(self, keys: list[ChunkKey]) -> dict[ChunkKey, np.ndarray | None]:
        """Stored bytes of each (part, array, chunk) of plain-zstd arrays; others are left out."""
        keys = [key for key in keys if plain_zstd(self.store.part_arrays(key[0])[key[1]])]
        found = {}
        if self.cache is not None:
            found = {key: data for key in keys if (data := self.cache.get(key)) is not None}
        missing = [key for key in keys if key not in found]
        stored = fetch_stored([(self.store.part_arrays(part)[array], c) for part, array, c in missing])
        for key, data in zip(missing, stored):
            found[key] = data
            if self.cache is not None and data is not None:
                self.cache.put(key, data)
        return found
