"""Replay sources: finding `.slp` replays in files, folders and archives, and reading their bytes.

Accepted inputs: `.slp` and `.slp.gz` files, folders (searched recursively, archives in them
included), `.zip`, `.tar`, `.tar.gz`/`.tgz` archives of `.slp` or `.slp.gz` members, and `.7z`
archives (with the `7z` extra), on local disk or at fsspec URLs (`s3://bucket/dump.zip`,
`gs://bucket/replays/`; see `storage`). Folder and zip members come in sorted order, so "the first
N games" means the same games every time. A source is small and picklable: worker processes open
files and zip members themselves (random access, remote ones through fsspec), while tar and 7z
members, which can only be read in order, travel with their bytes (`sequential_archive`).

What cannot be read is not an error that stops the listing: a broken archive, a member bigger than
the size cap, a tar member that is a link or a device come as sources with a `skip` reason, which
the encoder records like any skipped replay. The cap is checked on the stored size before anything
is read, and a gzipped replay is decompressed to at most the cap plus one byte.

peppi parses paths, not bytes: `local_replay_path` hands it the file itself when the source is a
plain `.slp` on disk, else a temporary copy that is removed when the `with` block ends.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import SourceError
from .storage import exists, filesystem, is_url, local_path

REPLAY_SUFFIXES = (".slp", ".slp.gz")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".7z")
# What reading a damaged file, gzip stream or archive raises.
UNREADABLE = (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile, tarfile.TarError)
_TMP_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class OversizeError(ValueError):
    """A replay bigger than the size cap; the message gives both sizes."""


@dataclass(frozen=True)
class ReplaySource:
    """One replay: a file on disk, a member of an archive, or bytes already read from a stream."""

    name: str  # shown in the store and messages: "dir/game.slp" or "dump.zip::dir/game.slp.gz"
    path: str  # the file, or the archive holding the member
    member: str | None = None
    data: bytes | None = None
    skip: str | None = None  # why it cannot be read, found while listing: the encoder records it

    @property
    def gzipped(self) -> bool:
        return (self.member or self.path).endswith(".gz")

    @property
    def remote(self) -> bool:
        return is_url(self.path)

    def read_bytes(self, storage_options: dict | None = None, max_bytes: int | None = None) -> bytes:
        """The replay's `.slp` bytes (gzip already undone). Raises `OversizeError` for a replay of
        more than `max_bytes`, stored or decompressed, having read at most that many plus one."""
        if max_bytes is not None:
            _check_size(self.stored_size(storage_options), max_bytes, "")
        if self.data is not None:
            raw = self.data
        elif self.member is not None:
            raw = _zip_handle(self.path, storage_options).read(self.member)
        elif self.remote:
            fs, path = filesystem(self.path, storage_options)
            raw = fs.cat_file(path)
        else:
            with open(self.path, "rb") as handle:
                raw = handle.read()
        if not self.gzipped:
            return raw
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as unzipped:
            data = unzipped.read(-1 if max_bytes is None else max_bytes + 1)
        _check_size(len(data), max_bytes, " decompressed")
        return data

    def stored_size(self, storage_options: dict | None = None) -> int:
        """Bytes of the file or member as stored (gzipped for `.slp.gz`), without reading them."""
        if self.data is not None:
            return len(self.data)
        if self.member is not None:
            return _zip_handle(self.path, storage_options).getinfo(self.member).file_size
        if self.remote:
            fs, path = filesystem(self.path, storage_options)
            return fs.size(path)
        return os.path.getsize(self.path)


def is_transient(error: BaseException, source: ReplaySource) -> bool:
    """An error reading a remote source that says nothing about the replay (a network failure):
    the read should be retried, not the replay recorded as unreadable."""
    return source.remote and isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, gzip.BadGzipFile))


def is_replay(name: str) -> bool:
    return name.lower().endswith(REPLAY_SUFFIXES)


def sequential_archive(path: str) -> bool:
    """A tar or 7z archive: its members can only be read in order, by one reader."""
    return path.lower().endswith(ARCHIVE_SUFFIXES) and not path.lower().endswith(".zip")


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def iter_sources(inputs: list[str], storage_options: dict | None = None, max_bytes: int | None = None) -> Iterator[ReplaySource]:
    """Every replay under `inputs`, in a stable order; tar and 7z members of more than `max_bytes`
    come unread, with their `skip` reason. Raises SourceError for an input that does not exist or
    is neither a replay, a folder nor an archive."""
    for given in inputs:
        path = _input_path(given)
        if _isdir(path, storage_options):
            yield from _folder(path, storage_options, max_bytes)
        elif not exists(path, storage_options):
            raise SourceError(f"{given}: no such file or folder")
        elif is_replay(path):
            yield ReplaySource(name=path, path=path)
        elif is_archive(path):
            yield from _archive(path, storage_options, max_bytes)
        else:
            raise SourceError(f"{given}: not a replay (.slp, .slp.gz), folder or archive ({', '.join(ARCHIVE_SUFFIXES)})")


def count_sources(inputs: list[str], storage_options: dict | None = None) -> int | None:
    """How many sources `iter_sources` will yield, when that is cheap to know (None with tar/7z)."""
    total = 0
    for given in inputs:
        path = _input_path(given)
        files = list(_folder_files(path, storage_options)) if _isdir(path, storage_options) else [path]
        for file in files:
            if is_replay(file):
                total += 1
            elif file.lower().endswith(".zip"):
                total += len(_zip_members(path=file, storage_options=storage_options)) if _readable_zip(file, storage_options) else 1
            else:
                return None
    return total


@contextlib.contextmanager
def local_replay_path(source: ReplaySource, data: bytes) -> Iterator[str]:
    """A path peppi can parse holding `data`: the source file itself, or a temporary copy."""
    if source.member is None and source.data is None and not source.gzipped and not source.remote:
        yield source.path
        return
    handle = tempfile.NamedTemporaryFile(suffix=".slp", dir=_TMP_DIR, delete=False)
    try:
        with handle:
            handle.write(data)
        yield handle.name
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(handle.name)


def _input_path(given: str) -> str:
    path = str(given)
    return path.rstrip("/") if is_url(path) else os.path.expanduser(local_path(path))


def _isdir(path: str, storage_options: dict | None) -> bool:
    if not is_url(path):
        return os.path.isdir(path)
    fs, inner = filesystem(path, storage_options)
    return fs.isdir(inner)


def _folder_files(folder: str, storage_options: dict | None = None) -> Iterator[str]:
    """The replays and archives under a folder, in a stable order."""
    if is_url(folder):
        fs, inner = filesystem(folder, storage_options)
        paths = [path for path in fs.find(inner) if is_replay(path) or is_archive(path)]  # one listing of the whole prefix
        yield from (fs.unstrip_protocol(path) for path in sorted(paths, key=lambda p: _walk_order(p[len(inner) :])))
        return
    for directory, subdirs, files in os.walk(folder):
        subdirs.sort()
        for name in sorted(files):
            if is_replay(name) or is_archive(name):
                yield os.path.join(directory, name)


def _walk_order(relative: str) -> tuple:
    """Sort key giving `os.walk`'s order (a folder's files, then its sorted sub-folders) to a listing."""
    *folders, name = relative.strip("/").split("/")
    return (*((1, folder) for folder in folders), (0, name))


def _folder(folder: str, storage_options: dict | None, max_bytes: int | None) -> Iterator[ReplaySource]:
    for path in _folder_files(folder, storage_options):
        if is_replay(path):
            yield ReplaySource(name=path, path=path)
        else:
            yield from _archive(path, storage_options, max_bytes)


def _archive(path: str, storage_options: dict | None, max_bytes: int | None) -> Iterator[ReplaySource]:
    """An archive's replays; one source with a `skip` reason where the archive breaks."""
    lower = path.lower()
    listed = 0
    try:
        if lower.endswith(".zip"):
            members = (ReplaySource(name=f"{path}::{m}", path=path, member=m) for m in _zip_members(path, storage_options))
        elif lower.endswith(".7z"):
            members = _seven_zip(path, storage_options, max_bytes)
        else:
            members = _tar(path, storage_options, max_bytes)
        for source in members:
            listed += 1
            yield source
    except SourceError as error:  # a .7z without the 7z extra, or one py7zr cannot read
        yield ReplaySource(name=path, path=path, skip=f"unreadable archive: {error}")
    except UNREADABLE as error:
        where = f" after {listed} members" if listed else ""
        yield ReplaySource(name=path, path=path, skip=f"unreadable archive{where}: {type(error).__name__}: {error}")


def _zip_members(path: str, storage_options: dict | None = None) -> list[str]:
    return sorted(name for name in _zip_handle(path, storage_options).namelist() if is_replay(name))


def _readable_zip(path: str, storage_options: dict | None) -> bool:
    try:
        _zip_handle(path, storage_options)
    except (zipfile.BadZipFile, OSError):
        return False
    return True


_open_zips: dict[str, zipfile.ZipFile] = {}


def _zip_handle(path: str, storage_options: dict | None = None) -> zipfile.ZipFile:
    """One open ZipFile per archive and process: reading its directory once, not per member.
    A remote zip is read with range requests: its directory, then each member's bytes."""
    if path not in _open_zips:
        _open_zips[path] = zipfile.ZipFile(_open_binary(path, storage_options))
    return _open_zips[path]


def _open_binary(path: str, storage_options: dict | None):
    """A seekable binary file object for a local path or a URL."""
    if not is_url(path):
        return open(path, "rb")
    fs, inner = filesystem(path, storage_options)
    return fs.open(inner, "rb")


def _tar(path: str, storage_options: dict | None, max_bytes: int | None) -> Iterator[ReplaySource]:
    with _open_binary(path, storage_options) as handle, tarfile.open(fileobj=handle, mode="r|*") as archive:  # a stream: in order
        for member in archive:
            if not is_replay(member.name) or member.isdir():
                continue
            name = f"{path}::{member.name}"
            skip = _not_regular(member) or _too_big(member.size, max_bytes)
            data = None if skip else archive.extractfile(member).read()
            yield ReplaySource(name=name, path=path, member=member.name, data=data, skip=skip)


def _not_regular(member: tarfile.TarInfo) -> str | None:
    """Why a tar member is not read: a link or a device has no replay bytes of its own."""
    if member.issym() or member.islnk():
        return f"not a regular file: a {'symbolic' if member.issym() else 'hard'} link to {member.linkname}"
    if not member.isfile():
        kind = "character device" if member.ischr() else "block device" if member.isblk() else "FIFO" if member.isfifo() else "special file"
        return f"not a regular file: a {kind}"
    return None


def _seven_zip(path: str, storage_options: dict | None, max_bytes: int | None) -> Iterator[ReplaySource]:
    try:
        import py7zr
    except ImportError:
        raise SourceError(f"{path}: .7z archives need the 7z extra (pip install 'melee-encode[7z]')") from None
    workdir = tempfile.mkdtemp(prefix="melee-encode-7z-")
    try:
        try:
            with _open_binary(path, storage_options) as handle, py7zr.SevenZipFile(handle, mode="r") as archive:
                replays = [info for info in archive.list() if is_replay(info.filename) and not info.is_directory]
                listed = sorted((info.filename, _too_big(info.uncompressed, max_bytes)) for info in replays)
                archive.extract(path=workdir, targets=[member for member, skip in listed if not skip])
        except (py7zr.exceptions.ArchiveError, py7zr.exceptions.PasswordRequired) as error:
            raise SourceError(f"not a readable 7z archive ({type(error).__name__}: {error})") from None
        for member, skip in listed:
            data = None
            if not skip:
                with open(os.path.join(workdir, member), "rb") as handle:
                    data = handle.read()
            yield ReplaySource(name=f"{path}::{member}", path=path, member=member, data=data, skip=skip)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _too_big(size: int, max_bytes: int | None) -> str | None:
    """The skip reason for a member of `size` stored bytes, if that passes the cap."""
    try:
        _check_size(size, max_bytes, "")
    except OversizeError as error:
        return f"too big: {error}"
    return None


def _check_size(size: int, max_bytes: int | None, what: str) -> None:
    if max_bytes is not None and size > max_bytes:
        shown = f"more than {max_bytes / 2**20:g} MB" if what else f"{size / 2**20:.1f} MB"
        raise OversizeError(f"{shown}{what}, past the {max_bytes / 2**20:g} MB cap (--max-replay-mb)")
