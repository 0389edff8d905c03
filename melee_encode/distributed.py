"""Encoding on a Dask cluster: batches of replays as tasks, each writing its own part of the store.

Imported only when an encode is given a Dask scheduler address or `distributed.Client`; Dask stays
an optional extra (`pip install 'melee-encode[dask]'`).

The client (the process that called `encode`) holds the store's writer lock or lease and is its
only committer, as with local workers. It lists the sources and submits them in batches of at most
`dask_batch`, smaller as the end nears (guided self-scheduling: each batch is a worker thread's
share of what is left, so the last tasks are short and the workers finish together). Each batch
gets the next part id from the client before it is submitted, so a task's part is fixed whichever
worker runs it, and how often. A task runs `ReplayEncoder` over its batch and
writes the part straight to the store (frames never pass through the client or the scheduler); it
returns only its outcomes (game records, skips) and the part's frame count, which the shared
`Coordinator` commits exactly as it commits a local worker's part (the first at once, then at most
every COMMIT_SECONDS, taking all the tasks finished since the last commit).

Failures: a task that raises is retried (`TASK_RETRIES`), and the scheduler reruns a task whose
worker died. A rerun recreates its part from scratch under the same id, and the store only ever
references parts of finished tasks, so nothing is lost or duplicated; an interrupted run resumes
as a local one does. Tasks need inputs they can read at random: files, folders, zip archives
(local to every worker, or at URLs); tar and 7z archives, readable only in order, are refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
import uuid
from collections.abc import Callable, Iterator

try:
    from distributed import Client, as_completed
except ImportError:  # pragma: no cover - depends on the installed extras
    raise ImportError("encoding on a Dask cluster needs the dask extra: pip install 'melee-encode[dask]'") from None

from .encoder import Coordinator, EncodeOptions, Outcome, ReplayEncoder
from .errors import ConfigError, SourceError
from .replay import one_line
from .sources import ReplaySource, sequential_archive

TASK_RETRIES = 3  # retries of a task that raised (a worker's death is handled by the scheduler)
QUEUED_PER_THREAD = 2  # tasks submitted per worker thread: one running, one ready to start
SMALLEST_BATCH = 16  # the last batches' size: smaller ones cost more in per-part overhead than they save
COMMIT_SECONDS = 5.0  # the shortest time between commits (an interrupted run redoes the finished, uncommitted tasks)


@contextlib.contextmanager
def dask_runner(inputs: list[str], options: EncodeOptions) -> Iterator[Callable[[Coordinator, Iterator[ReplaySource]], None]]:
    """Check the inputs, connect to the cluster, and give the runner `encode` calls with the store open."""
    for given in inputs:
        if sequential_archive(given):
            raise SourceError(
                f"{given}: tar and 7z archives can only be read in order, not spread over Dask tasks; give a zip archive or a folder, or encode without Dask"
            )
    if options.dask_batch < 1:
        raise ConfigError(f"dask_batch must be at least 1, got {options.dask_batch}")
    client, owned = _connect(options.dask)
    try:
        yield lambda coordinator, sources: run(client, coordinator, sources)
    finally:
        if owned:
            client.close()


def run(client: Client, coordinator: Coordinator, sources: Iterator[ReplaySource]) -> None:
    """Encode every source as Dask tasks, committing each task's part as it finishes."""
    writer, options = coordinator.writer, coordinator.options
    # One part per task, whatever its size: a second part would need an id the client did not assign.
    task_options = dataclasses.replace(options, dask=None, workers=1, progress=False, part_frames=sys.maxsize)
    [known] = client.scatter([set() if options.allow_duplicates else set(writer.known_hashes)], broadcast=True, hash=False)
    run_id = uuid.uuid4().hex[:8]
    listed = list(sources)  # names only, not replays: the batch sizes need the count left
    taken = 0
    queued: dict = {}  # future -> sources in its batch
    in_flight = 0  # sources in the queued batches
    finished = as_completed()
    closed: list = []  # parts of finished tasks, not committed yet
    last_commit = -math.inf  # the first finished task is committed at once
    try:
        while True:
            threads = max(1, sum(client.nthreads().values()))  # workers may come and go
            while taken < len(listed) and len(queued) < max(2, QUEUED_PER_THREAD * threads):
                size = coordinator.room(in_flight, _batch_size(len(listed) - taken, threads, options.dask_batch))
                batch = listed[taken : taken + size]
                taken += len(batch)
                if not batch:
                    break
                part = writer.allocate_part()
                future = client.submit(
                    encode_batch,
                    writer.path,
                    task_options,
                    part,
                    batch,
                    known,
                    key=f"melee-encode-{run_id}-part-{part:08d}",
                    retries=TASK_RETRIES,
                    pure=False,
                )
                queued[future] = len(batch)
                in_flight += len(batch)
                finished.add(future)
            if not queued:
                break
            for future in [next(finished), *finished.next_batch(block=False)]:
                outcomes, part = _result(future)
                in_flight -= queued.pop(future)
                for outcome in outcomes:
                    coordinator.handle(outcome)
                closed.append(part)
            # Finished tasks are committed together, at most every COMMIT_SECONDS: a commit rewrites
            # the tables' last chunks, and on a small cluster the client shares the workers' cores.
            if time.monotonic() - last_commit >= COMMIT_SECONDS:
                coordinator.commit_parts(closed)
                closed, last_commit = [], time.monotonic()
        coordinator.commit_parts(closed)
        # Every task has finished: a part an earlier attempt left but no finished task kept goes.
        writer.remove_uncommitted_parts()
    finally:
        client.cancel(list(queued))


def encode_batch(
    store_path: str, options: EncodeOptions, part: int, sources: list[ReplaySource], known_hashes: set[str]
) -> tuple[list[Outcome], tuple[int, int] | None]:
    """One task: encode `sources` into part `part` (created afresh), return the outcomes and the part."""
    encoder = ReplayEncoder(store_path, options, known_hashes, allocate_part=lambda: part)
    outcomes = [encoder.process(source) for source in sources]
    return outcomes, encoder.finish()


def _connect(dask) -> tuple[Client, bool]:
    """(client, whether we opened it): a given Client is used as is, an address is connected to."""
    if isinstance(dask, Client):
        return dask, False
    try:
        return Client(str(dask), set_as_default=False), True
    except OSError as error:
        raise ConfigError(f"cannot reach the Dask scheduler at {dask}: {one_line(error)}") from None


def _batch_size(remaining: int, threads: int, largest: int) -> int:
    """A worker thread's share of the sources left, between SMALLEST_BATCH and `largest`."""
    return max(1, min(largest, max(SMALLEST_BATCH, math.ceil(remaining / threads))))


def _result(future):
    try:
        return future.result()
    except Exception as error:
        raise RuntimeError(
            f"a Dask encode task failed after {TASK_RETRIES} retries; committed games are kept, re-run to resume: {one_line(error)}"
        ) from error
