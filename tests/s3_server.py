"""A real S3-protocol server on 127.0.0.1 that the test suite starts and stops itself.

The server is moto's S3 (moto 5.2.5) run as a separate process, so icechunk talks to it
over HTTP exactly as it would to an object store: no in-process mocking of botocore, and
icechunk's Rust client cannot tell the difference.

Conditional writes are what make concurrent icechunk commits safe on object storage:
icechunk 2.3 moves a branch by rewriting its ``repo`` object with ``If-Match`` (seen in
moto's request recording). moto answers a failed ``If-Match`` or ``If-None-Match: *``
with 412 PreconditionFailed, but it checks the condition and stores the object in two steps without a lock,
while its server handles requests on many threads. Under load two conditional PUTs can
both win (seen: with a 1 µs thread switch interval, 8 racing ``If-Match`` PUTs had more
than one winner in 8 rounds of 100). This module therefore does not run
``python -m moto.server`` but the same moto application behind one lock, so that every
request is atomic, as a conditional PUT is on S3. ``tests/storage`` checks all of this.

What moto does not do: it does not verify request signatures, so any credentials work.
Tests here can show which credentials a client *sends* (or whether it finds any), not
that a wrong secret is rejected.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Imported lazily at run time: this file is also the server's entry point, and the
    # server process has no use for icechunk or boto3.
    import icechunk

# moto needs no particular credentials; these are distinctive so tests can grep for them.
ACCESS_KEY_ID = "AKIAICEFLOETESTKEY00"
SECRET_ACCESS_KEY = "icefloe-test-secret-0123456789abcdef"
REGION = "us-east-1"

# The server is healthy after about 0.5 s on these machines; 20 s is for a loaded CI box.
STARTUP_TIMEOUT_S = 20.0
# The free-port probe and the server's bind are not atomic: another process can take
# the port in between. If the server dies before it is healthy we retry on a new port.
START_ATTEMPTS = 3


@dataclass(frozen=True)
class S3Endpoint:
    """Where the server listens and the credentials to use with it."""

    endpoint_url: str
    region: str
    access_key_id: str
    secret_access_key: str

    def client(self) -> Any:  # botocore generates the S3 client class at run time
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def fresh_bucket_options(self) -> tuple[str, dict[str, Any]]:
        """A new bucket's repository URL and the storage options that reach this server."""
        bucket = f"icefloe-{uuid.uuid4().hex[:16]}"
        self.create_bucket(bucket)
        options = {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "allow_http": True,
            "force_path_style": True,
        }
        return f"s3://{bucket}/repo", options

    def create_bucket(self, name: str) -> None:
        # us-east-1 is the one region where CreateBucket takes no LocationConstraint.
        self.client().create_bucket(Bucket=name)

    def storage(self, bucket: str, prefix: str, **credentials: Any) -> icechunk.Storage:
        """icechunk storage on this server; static credentials unless others are given.

        ``force_path_style`` because the server is addressed by IP: virtual-hosted style
        would put the bucket name into the host name.
        """
        import icechunk

        if not credentials:
            credentials = {
                "access_key_id": self.access_key_id,
                "secret_access_key": self.secret_access_key,
            }
        return icechunk.s3_storage(
            bucket=bucket,
            prefix=prefix,
            endpoint_url=self.endpoint_url,
            region=self.region,
            allow_http=True,
            force_path_style=True,
            **credentials,
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _log_tail(log: Path, chars: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@contextlib.contextmanager
def s3_server() -> Iterator[S3Endpoint]:
    """Start the S3 server in a subprocess, yield its endpoint, stop it at exit.

    The server is stopped on every exit path, including a failed start and an exception
    in the body. Its state lives in memory only: nothing survives the context.
    """
    with tempfile.TemporaryDirectory(prefix="icefloe-s3-") as tmp:
        log = Path(tmp) / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
        # moto's request recorder (off unless a test switches it on) writes to the
        # working directory by default; keep it out of the checkout.
        env["MOTO_RECORDER_FILEPATH"] = str(Path(tmp) / "recording.jsonl")
        last_error = ""
        for _ in range(START_ATTEMPTS):
            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            # Output goes to a file, not a pipe: nobody reads a pipe while tests run,
            # and a full pipe would block the server.
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    # -P: do not put tests/ on sys.path, where its packages could shadow
                    # modules the server imports.
                    [sys.executable, "-P", __file__, "--port", str(port)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=tmp,
                )
            try:
                deadline = time.monotonic() + STARTUP_TIMEOUT_S
                while proc.poll() is None and time.monotonic() < deadline:
                    if _healthy(url):
                        break
                    time.sleep(0.05)
                else:
                    if proc.poll() is None:
                        raise RuntimeError(
                            f"S3 server on {url} not healthy after {STARTUP_TIMEOUT_S} s:\n"
                            f"{_log_tail(log)}"
                        )
                    last_error = f"exited with {proc.returncode}:\n{_log_tail(log)}"
                    continue  # died early, e.g. the port was taken: try another port
                yield S3Endpoint(
                    endpoint_url=url,
                    region=REGION,
                    access_key_id=ACCESS_KEY_ID,
                    secret_access_key=SECRET_ACCESS_KEY,
                )
                return
            finally:
                _stop(proc)
        raise RuntimeError(f"S3 server failed to start {START_ATTEMPTS} times; last {last_error}")


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def serialized(app: WSGIApp) -> WSGIApp:
    """Handle one request at a time, making moto's check-then-store conditional PUT atomic.

    The response is materialised inside the lock so no part of a request runs
    concurrently with another. Connections still get their own threads, so keep-alive
    clients (icechunk opens several) do not block each other while idle.
    """
    lock = threading.Lock()

    def locked(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with lock:
            return list(app(environ, start_response))

    return locked


def _serve(host: str, port: int) -> None:
    """The server process: what ``python -m moto.server`` runs, behind one lock."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    os.environ.setdefault("MOTO_PORT", str(port))  # as moto.server does: moto builds URLs with it
    # Exit cleanly on terminate(), as moto.server does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(
        host,
        port,
        serialized(DomainDispatcherApplication(create_backend_app)),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    _serve(args.host, args.port)
