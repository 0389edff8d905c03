"""Where stores and inputs live: local paths, or fsspec URLs (`s3://`, `gs://`, ...) with storage options.

Credentials are never ours: s3fs, gcsfs and the rest find them the usual way (environment variables,
profiles, instance metadata). Storage options pass through to fsspec what a URL alone cannot say,
such as an `endpoint_url` for an S3-compatible server; the same options apply to every URL of a run.

A `file://` URL is a local path. Listings of remote stores are never cached: other processes (the
encode's workers) add and remove objects, and a stale listing would hide them. Objects are fetched
whole with one request each (s3fs would first ask each object's size); concurrency comes from
issuing many requests at once (`gather`), not from splitting one.
"""

from __future__ import annotations

import asyncio
import json
import os

import zarr
from zarr.core.sync import sync

from .errors import ConfigError

_DEFAULT_OPTIONS = {"use_listings_cache": False}
_PROTOCOL_OPTIONS = {"s3": {"max_concurrency": 1}, "s3a": {"max_concurrency": 1}}


def is_url(path: str) -> bool:
    """True for a remote fsspec URL; False for a local path or a `file://` URL."""
    protocol, sep, _ = str(path).partition("://")
    return bool(sep) and protocol != "file"


def local_path(path: str) -> str:
    """A local path or `file://` URL as a plain path."""
    path = str(path)
    return path[len("file://") :] if path.startswith("file://") else path


def filesystem(url: str, storage_options: dict | None = None):
    """(fsspec filesystem, path inside it) of a URL; the filesystem instance is shared per options."""
    import fsspec

    return fsspec.core.url_to_fs(url, **_options(url, storage_options))


def open_zarr(path: str, mode: str, storage_options: dict | None = None) -> zarr.Group:
    """A Zarr v3 group at a local path or URL (created with mode "a" if there is none)."""
    # Only v3 and no consolidated metadata: zarr would otherwise probe for v2 and consolidated keys.
    kwargs = {"zarr_format": 3, "use_consolidated": False} if mode in ("r", "r+") else {"zarr_format": 3}
    if not is_url(path):
        return zarr.open_group(local_path(path), mode=mode, **kwargs)
    return zarr.open_group(path, mode=mode, storage_options=_options(path, storage_options), **kwargs)


def gather(*coroutines) -> list:
    """Run zarr coroutines at once on zarr's event loop and return their results in order. On an
    object store each is a request or a few: their latencies overlap instead of adding up."""

    async def all_of() -> list:
        return await asyncio.gather(*coroutines)

    return sync(all_of())


def _options(url: str, storage_options: dict | None) -> dict:
    protocol = str(url).partition("://")[0]
    return {**_DEFAULT_OPTIONS, **_PROTOCOL_OPTIONS.get(protocol, {}), **(storage_options or {})}


def exists(path: str, storage_options: dict | None = None) -> bool:
    if not is_url(path):
        return os.path.exists(local_path(path))
    fs, inner = filesystem(path, storage_options)
    return fs.exists(inner)


def list_names(path: str, storage_options: dict | None = None) -> set[str]:
    """Names directly under a folder or prefix (empty if there is none)."""
    if not is_url(path):
        return set(os.listdir(local_path(path))) if os.path.isdir(local_path(path)) else set()
    fs, inner = filesystem(path, storage_options)
    try:
        return {entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(inner, detail=False)}
    except FileNotFoundError:
        return set()


def sizes_under(path: str, storage_options: dict | None = None) -> dict[str, int]:
    """Size of every file under a folder or prefix, by its path relative to it ("a/b"), in one listing."""
    if not is_url(path):
        root, sizes = local_path(path), {}
        for directory, _, files in os.walk(root):
            for name in files:
                full = os.path.join(directory, name)
                try:
                    sizes[os.path.relpath(full, root).replace(os.sep, "/")] = os.path.getsize(full)
                except FileNotFoundError:
                    pass
        return sizes
    fs, inner = filesystem(path, storage_options)
    try:
        found = fs.find(inner, detail=True)
    except FileNotFoundError:
        return {}
    prefix = inner.rstrip("/") + "/"
    return {name.removeprefix(prefix): int(entry["size"]) for name, entry in found.items()}


def add_storage_option_argument(parser) -> None:
    """The repeatable `--storage-option KEY=VALUE` of every command that takes a URL (see parse_storage_options)."""
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option for URLs, e.g. endpoint_url=http://minio:9000 (repeatable; never credentials)",
    )


def parse_storage_options(pairs: list[str]) -> dict:
    """`key=value` strings as storage options; a value that parses as JSON (true, 3, {...}) is taken as such."""
    options = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"storage option {pair!r} is not key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options[key.strip()] = value
    return options
