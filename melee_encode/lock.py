"""The single-writer rule of a store: an flock on local disk, a lease object on an object store.

One committer at a time (see `writer`): `writer_lock(path)` gives the right kind for the path, and
both kinds offer `check()` (raise if this writer may no longer commit) and `release()`.

Local disk: an flock on STORE/.writer.lock. The kernel drops it when its process dies (kill -9
included), so a resumed encode never finds a stale lock, while a second live writer is refused with
the holder's pid and host.

Object stores have no flock. The lease is a sequence of small objects in the store,
`STORE/.writer-lease.NNNNNNNN`, one per generation, each holding its holder, an expiry time and
whether it was released. A writer takes generation g+1 when generation g is absent, released or
expired, by creating g+1's object exclusively (a conditional PUT: of two writers racing for it, one
wins). While it lives, a heartbeat thread pushes its expiry forward. A writer that stalls past its
expiry can be taken over; it notices the newer generation and must stop committing (`check`).
Expiry times are wall-clock seconds of the writers' machines: the TTL must exceed their clock skew.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

from .errors import LeaseError, StoreError
from .format import LOCK_NAME, utc_timestamp
from .storage import filesystem, is_url, local_path

LEASE_PREFIX = ".writer-lease."
DEFAULT_TTL = 60.0  # seconds a lease stays live without a heartbeat


def writer_lock(path: str, storage_options: dict):
    """The exclusive writer lock of a store: an flock on local disk, a lease on an object store."""
    if not is_url(path):
        return WriterLock(local_path(path))
    return WriterLease(path, storage_options)


def is_lock_name(name: str) -> bool:
    """True for the name of a lock or lease object in a store's top folder."""
    return name == LOCK_NAME or name.startswith(LEASE_PREFIX)


class WriterLock:
    """An exclusive, crash-safe writer lock on a local store: an flock on STORE/.writer.lock.

    The kernel drops the lock when its process dies (kill -9 included), so a resumed encode never
    finds a stale lock, while a second live writer is refused with the holder's pid and host.
    """

    def __init__(self, path: str):
        Path(path).mkdir(parents=True, exist_ok=True)
        self.file = open(os.path.join(path, LOCK_NAME), "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise StoreError(f"{path} is being written by {holder}; refusing a second writer") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": utc_timestamp()}))
        self.file.flush()

    def check(self) -> None:
        """Nothing to check: the kernel holds an flock for as long as this process lives."""

    def release(self) -> None:
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


class WriterLease:
    """Holds the writer lease of the store at `url` until `release`; refreshed by a heartbeat thread."""

    def __init__(self, url: str, storage_options: dict | None = None, ttl: float | None = None):
        self.url = url.rstrip("/")
        self.ttl = ttl or DEFAULT_TTL
        self.fs, self.root = filesystem(self.url, storage_options)
        self.holder = f"pid {os.getpid()} on {socket.gethostname()}"
        self.lost: str | None = None  # why this writer may no longer commit
        self.expires = time.time() + self.ttl
        self.generation = self._acquire()
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="melee-encode-lease", daemon=True)
        self._heartbeat.start()

    def check(self) -> None:
        """Raise LeaseError if this writer lost the lease (then it must not commit)."""
        if not self.lost and time.time() >= self.expires:
            self.lost = "this writer's lease expired before it could refresh it"
        if self.lost:
            raise LeaseError(f"{self.url}: {self.lost}; committed games are kept, re-run to resume")

    def release(self) -> None:
        """Stop the heartbeat and mark the lease released, so that the next writer need not wait."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._heartbeat.join()
        try:
            if not self.lost and self._newest() == self.generation:
                self._write(self.generation, expires=0.0, released=True)
        except Exception:  # unreachable store: the lease then simply expires after its TTL
            pass

    def _acquire(self) -> int:
        listed = self._generations()
        newest = max(listed, default=None)
        if newest is not None:
            record = self._read(newest)
            if record is not None and not record["released"] and record["expires"] > time.time():
                raise LeaseError(_refusal(self.url, record))
        generation = -1 if newest is None else newest
        generation += 1
        try:
            self._write(generation, expires=self.expires, exclusive=True)
        except FileExistsError:  # another writer took this generation a moment ago
            record = self._read(generation) or {"holder": "another writer", "expires": time.time() + self.ttl}
            raise LeaseError(_refusal(self.url, record)) from None
        for older in (name for number, name in listed.items() if number < generation):
            self.fs.rm_file(older)
        return generation

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                if self._newest() != self.generation:
                    self.lost = "another writer took over the store's lease"
                    return
                expires = time.time() + self.ttl
                self._write(self.generation, expires=expires)
                self.expires = expires
            except Exception as error:  # a network hiccup: try again on the next beat, until expiry
                if time.time() >= self.expires:
                    self.lost = f"the store's lease expired: could not refresh it ({type(error).__name__}: {error})"
                    return

    def _path(self, generation: int) -> str:
        return f"{self.root}/{LEASE_PREFIX}{generation:08d}"

    def _generations(self) -> dict[int, str]:
        """The lease objects in the store: generation -> object name."""
        names = self.fs.glob(f"{self.root}/{LEASE_PREFIX}*")
        return {int(name.rsplit(".", 1)[-1]): name for name in names if name.rsplit(".", 1)[-1].isdigit()}

    def _newest(self) -> int | None:
        return max(self._generations(), default=None)

    def _read(self, generation: int) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(self._path(generation)))
        except FileNotFoundError:
            return None

    def _write(self, generation: int, expires: float, released: bool = False, exclusive: bool = False) -> None:
        record = {"holder": self.holder, "expires": expires, "released": released, "written": utc_timestamp()}
        self.fs.pipe_file(self._path(generation), json.dumps(record).encode(), mode="create" if exclusive else "overwrite")


def _refusal(url: str, record: dict) -> str:
    left = max(0.0, record["expires"] - time.time())
    return f"{url} is being written by {record['holder']} (lease live for {left:.0f} more s); refusing a second writer"
