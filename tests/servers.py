"""Real servers on loopback for the remote-store tests and benchmarks: an S3-compatible server (moto).

The server runs in its own process (as s3fs's own tests run it), so that its request handling does
not share this process's interpreter. Credentials are dummy ones put in the environment, the usual
place s3fs and botocore look, before any worker process (a Dask worker's included) starts.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def local_cluster():
    """A Dask LocalCluster (the scheduler in this process, two single-threaded worker processes) and
    its Client. The nannies, which run in this process, put MALLOC_TRIM_THRESHOLD_=65536 and thread
    caps into its environment whenever they start a worker (a restart included). They are undone once
    the cluster is up and again when it closes, so other subprocesses (training ranks, the local
    pool's helpers) do not inherit them: with them, training runs ~2x slower in the kernel."""
    from distributed import Client, LocalCluster

    saved = dict(os.environ)

    def restore() -> None:
        os.environ.clear()
        os.environ.update(saved)

    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
            restore()
            yield client
    finally:
        restore()


class S3Server:
    """`python -m moto.server` on a free loopback port, from `start` to `stop`."""

    def __init__(self):
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.storage_options = {"endpoint_url": self.endpoint_url}
        self.process: subprocess.Popen | None = None
        self._saved_env: dict = {}

    def start(self) -> S3Server:
        self._saved_env = {key: os.environ.get(key) for key in CREDENTIALS}
        os.environ.update(CREDENTIALS)
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the moto S3 server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint_url, use_listings_cache=False, skip_instance_cache=True)

    def put_store(self, path: str, name: str) -> str:
        """A copy of the store at `path`, object by object, in a fresh bucket; returns its URL."""
        url = f"s3://{self.new_bucket()}/{name}"
        self.filesystem().put(path, url.removeprefix("s3://"), recursive=True)
        return url

    def new_bucket(self) -> str:
        """A fresh, empty bucket; returns its name."""
        name = f"test-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return name

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
