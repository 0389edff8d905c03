"""Encoding on this machine: this process and `workers - 1` helper processes.

Each helper runs a `ReplayEncoder` over the sources it is handed and writes its own parts; this
process encodes too, between handing out sources and collecting the helpers' outcomes, which the
`Coordinator` commits. Helpers start from a fork server that has imported this package once.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import traceback
from collections.abc import Iterator

from .encoder import Coordinator, EncodeOptions, Outcome, ReplayEncoder
from .sources import ReplaySource
from .writer import StoreWriter


def run_local(coordinator: Coordinator, sources: Iterator[ReplaySource]) -> None:
    """Encode every source: here, and in `workers - 1` helper processes when there are more."""
    writer, options = coordinator.writer, coordinator.options
    pool = _WorkerPool(options.workers - 1, writer, options) if options.workers > 1 else None
    encoder = ReplayEncoder(writer.path, options, writer.known_hashes, pool.allocate_part if pool else writer.allocate_part)
    exhausted = False
    try:
        while True:
            while pool and not exhausted and pool.has_room() and coordinator.wants_more(pool.in_flight):
                source = next(sources, None)
                exhausted = source is None
                if source is not None:
                    pool.submit(source)
            for outcome in pool.answers() if pool else ():
                coordinator.handle(outcome)
            in_flight = pool.in_flight if pool else 0
            source = None
            if not exhausted and coordinator.wants_more(in_flight):
                source = next(sources, None)
                exhausted = source is None
            if source is not None:
                coordinator.handle(encoder.process(source))  # this process works too between dispatches
            elif in_flight:
                coordinator.handle(pool.wait_answer())
            else:
                break
        coordinator.commit_parts([encoder.finish()] + (pool.finish() if pool else []))
    finally:
        if pool:
            pool.stop()
            writer.next_part = pool.next_part()


class _WorkerPool:
    """Helper processes, each running a ReplayEncoder over the sources it is handed."""

    def __init__(self, size: int, writer: StoreWriter, options: EncodeOptions):
        context = mp_context()
        # Sources handed out and not yet answered, per helper. This process collects answers only
        # between its own replays, so finished ones still count: with 4 a helper idled ~17% of
        # the time on short replays; with 16, ~3%.
        self.capacity = 16 * size
        self.tasks, self.results = context.Queue(), context.Queue()
        self.counter = context.Value("q", writer.next_part)  # part ids, shared with this process
        self.in_flight = 0
        # The worker server's environment is the one it started with, maybe before credentials were
        # set (a bucket's, say): each helper takes this process's environment as it is now.
        args = (self.tasks, self.results, writer.path, options, writer.known_hashes, self.counter, dict(os.environ))
        self.processes = [context.Process(target=_worker_main, args=args, daemon=True) for _ in range(size)]
        # Starting a process waits for the worker server's imports (~1 s): this process works meanwhile.
        self.starter = threading.Thread(target=lambda: [p.start() for p in self.processes], daemon=True)
        self.starter.start()

    def allocate_part(self) -> int:
        return _next_part(self.counter)

    def next_part(self) -> int:
        with self.counter.get_lock():
            return self.counter.value

    def has_room(self) -> bool:
        return self.in_flight < self.capacity

    def submit(self, source: ReplaySource) -> None:
        self.tasks.put(source)
        self.in_flight += 1

    def answers(self) -> list[Outcome]:
        """The outcomes ready now, without waiting."""
        ready = []
        while self.in_flight:
            try:
                ready.append(self._unwrap(self.results.get_nowait()))
            except queue.Empty:
                break
            self.in_flight -= 1
        return ready

    def wait_answer(self) -> Outcome:
        outcome = self._receive()
        self.in_flight -= 1
        return outcome

    def finish(self) -> list[tuple[int, int] | None]:
        """Stop the helpers after their work; return the part each had open."""
        for _ in self.processes:
            self.tasks.put(None)
        self.starter.join()
        closed = [self._receive() for _ in self.processes]
        for process in self.processes:
            process.join()
        return closed

    def stop(self) -> None:
        self.starter.join()
        for process in self.processes:
            if process.is_alive():
                process.terminate()

    def _receive(self):
        while True:
            try:
                return self._unwrap(self.results.get(timeout=1.0))
            except queue.Empty:
                dead = [p for p in self.processes if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(
                        f"an encode worker died (exit code {dead[0].exitcode}); committed games are kept, re-run to resume"
                    ) from None

    @staticmethod
    def _unwrap(message):
        if isinstance(message, str):  # a helper's traceback
            raise RuntimeError(f"an encode worker failed; committed games are kept, re-run to resume:\n{message}")
        return message


def _next_part(counter) -> int:
    with counter.get_lock():
        part = counter.value
        counter.value += 1
    return part


def _worker_main(tasks, results, store_path, options, known_hashes, counter, environment) -> None:
    os.environ.clear()
    os.environ.update(environment)
    try:
        encoder = ReplayEncoder(store_path, options, known_hashes, lambda: _next_part(counter))
        for source in iter(tasks.get, None):
            results.put(encoder.process(source))
        results.put(encoder.finish())
    except BaseException:
        results.put(traceback.format_exc())


def mp_context():
    """Worker processes start from a server that has imported this package once (not by fork:
    this process may run threads, zarr's among them)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["melee_encode.local"])
    from multiprocessing import forkserver

    forkserver.ensure_running()
    return context
