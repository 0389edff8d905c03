"""The encode pipeline: replay sources -> workers -> parts -> committed store.

`encode` opens the store (its writer lock held for the whole run), lists the sources, and has a
runner do the work: this machine's processes (`local`), or Dask tasks on a cluster (`distributed`,
imported only then). Either way `encoder.ReplayEncoder` encodes and `encoder.Coordinator` commits.
Memory is bounded by workers x (one replay + one chunk buffer) whatever the corpus size: nothing is
ever concatenated. Re-running an interrupted encode resumes: the store's writer removes what was
never committed and the content hashes skip what was.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator

from .encoder import Coordinator, EncodeOptions, EncodeSummary
from .local import mp_context, run_local
from .sources import ReplaySource, count_sources, iter_sources
from .writer import StoreWriter


def encode(inputs: Iterable[str], store_path: str, options: EncodeOptions | None = None) -> EncodeSummary:
    """Encode every replay under `inputs` into the store at `store_path` (created if needed).

    `store_path` and the inputs may be fsspec URLs; with `options.dask`, the work runs on that cluster.
    """
    options = options or EncodeOptions()
    inputs = [str(i) for i in inputs]
    started = time.perf_counter()
    with _runner(inputs, options) as run:
        with StoreWriter(store_path, options.config, options.filters, options.chunk_frames, options.storage_options) as writer:
            coordinator = Coordinator(writer, options)
            listed = iter_sources(inputs, options.storage_options, options.max_replay_bytes)
            sources = (s for s in listed if s.name not in writer.known_sources)
            total = count_sources(inputs, options.storage_options) if options.progress else None
            with _progress(options.progress, total) as bar:
                coordinator.bar = bar
                run(coordinator, sources)
            summary = coordinator.summary
            summary.store_games = writer.n_games
    summary.seconds = time.perf_counter() - started
    return summary


@contextlib.contextmanager
def _runner(inputs: list[str], options: EncodeOptions) -> Iterator[Callable[[Coordinator, Iterator[ReplaySource]], None]]:
    """How the sources get encoded: on a Dask cluster, or here and in local helper processes.
    Chosen before the store opens, so that a bad cluster address or input fails first."""
    if options.dask is not None:
        from .distributed import dask_runner

        with dask_runner(inputs, options) as run:
            yield run
        return
    if options.workers > 1:
        mp_context()  # starts the worker server now, while the store opens
    yield run_local


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress(enabled: bool, total: int | None):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="replay", dynamic_ncols=True, smoothing=0.1)
