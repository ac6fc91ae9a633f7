"""The S3 repository backend against a real S3-compatible server (SeaweedFS, started by the tests)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from inferpack.errors import ModelNotFound, RepositoryError
from inferpack.repository.local import LocalRepository, open_repository
from inferpack.repository.s3 import SYNC_RECORD, S3Repository, open_s3_repository
from inferpack.repository.s3config import make_s3_client, parse_s3_uri
from inferpack.repository.s3push import push_repository


def make_local_repo(root: Path) -> Path:
    """Two tiny fake models: a (versions 1, 2; v2 uses a shared tokenizer) and b (version 1)."""

    def version(model: str, n: int, weights: bytes, tokenizer: str = "tokenizer.json") -> None:
        d = root / model / str(n)
        d.mkdir(parents=True)
        manifest = {"format": "safetensors", "task": "text-classification", "weights": "model.safetensors"}
        manifest["tokenizer"] = tokenizer
        (d / "manifest.json").write_text(json.dumps(manifest))
        (d / "config.json").write_text(json.dumps({"hidden_size": 8, "model": model, "v": n}))
        (d / "model.safetensors").write_bytes(weights)
        if tokenizer == "tokenizer.json":
            (d / "tokenizer.json").write_text('{"vocab": ["a"]}')

    version("a", 1, os.urandom(3000))
    version("a", 2, os.urandom(5000), tokenizer="../../_shared/tokenizers/t1.json")
    version("b", 1, os.urandom(100))
    (root / "_shared" / "tokenizers").mkdir(parents=True)
    (root / "_shared" / "tokenizers" / "t1.json").write_text('{"vocab": ["shared"]}')
    (root / ".hidden-scratch").write_text("never pushed")
    return root


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://bkt/a/b/").bucket == "bkt"
    assert parse_s3_uri("s3://bkt/a/b/").prefix == "a/b"
    assert parse_s3_uri("s3://bkt").prefix == ""
    assert parse_s3_uri("s3://bkt/x").key("m/1/manifest.json") == "x/m/1/manifest.json"
    for bad in ("http://bkt/x", "s3://", "s3://bkt/a/../b", "s3://bkt/a//b"):
        with pytest.raises(RepositoryError):
            parse_s3_uri(bad)


def test_push_lists_and_reads_manifest_without_weights(tmp_path: Path, bucket: str) -> None:
    local = make_local_repo(tmp_path / "repo")
    counts = push_repository(local, f"s3://{bucket}/prod/repo")
    assert counts == {"uploaded": 12, "skipped": 0}
    name, _, top = bucket.partition("/")
    keys = {o["Key"] for o in make_s3_client().list_objects_v2(Bucket=name, Prefix=top)["Contents"]}
    assert f"{top}/prod/repo/_shared/tokenizers/t1.json" in keys
    assert not any(".hidden" in k for k in keys)

    repo = open_s3_repository(f"s3://{bucket}/prod/repo", cache_dir=tmp_path / "cache")
    assert isinstance(repo, LocalRepository)
    assert repo.model_ids() == ["a", "b"]
    assert repo.versions("a") == [1, 2]
    assert repo.latest_version("a") == 2
    assert repo.manifest("a").tokenizer == "../../_shared/tokenizers/t1.json"
    assert not repo.is_cached("a", 2), "reading a manifest must not download the weights"
    with pytest.raises(ModelNotFound):
        repo.versions("zzz")
    with pytest.raises(ModelNotFound):
        repo.version_dir("a", 7)

    again = push_repository(local, f"s3://{bucket}/prod/repo")
    assert again == {"uploaded": 0, "skipped": 12}


def test_version_sync_checks_files_and_survives_restart_without_s3(tmp_path: Path, bucket: str) -> None:
    local = make_local_repo(tmp_path / "repo")
    push_repository(local, f"s3://{bucket}/r")
    cache = tmp_path / "cache"
    repo = open_repository(f"s3://{bucket}/r", cache_dir=cache)
    assert isinstance(repo, S3Repository)

    path = repo.version_dir("a", 1)
    for name in ("manifest.json", "config.json", "model.safetensors", "tokenizer.json"):
        assert _sha(path / name) == _sha(local / "a" / "1" / name)
    record = json.loads((path / SYNC_RECORD).read_text())
    assert sorted(f["key"].rsplit("/", 1)[1] for f in record["files"]) == [
        "config.json", "manifest.json", "model.safetensors", "tokenizer.json"
    ]  # fmt: skip
    assert not any(p.name.startswith((".sync-", ".part-")) for p in cache.rglob("*"))

    # The shared tokenizer is fetched when resolved, and it lands inside the cache's _shared/.
    tok = repo.resolve_file("a", 2, repo.manifest("a", 2).tokenizer)
    assert tok == (repo.root / "_shared" / "tokenizers" / "t1.json").resolve()
    assert tok.read_text() == '{"vocab": ["shared"]}'
    assert repo.manifest("a").weights == "model.safetensors"

    # "Restart" with S3 unreachable: a closed port. The cache serves what was synced.
    dead_port = socket.socket()
    dead_port.bind(("127.0.0.1", 0))
    port = dead_port.getsockname()[1]
    dead_port.close()
    offline = S3Repository(
        parse_s3_uri(f"s3://{bucket}/r"), cache, make_s3_client(f"http://127.0.0.1:{port}")
    )
    offline.client.meta.config.retries = {"max_attempts": 1}
    assert offline.model_ids() == ["a"]  # b was never synced
    assert offline.versions("a") == [1, 2]
    assert offline.version_dir("a", 2) == repo.version_dir("a", 2)
    assert (
        offline.resolve_file("a", 2, "model.safetensors").read_bytes()
        == (local / "a" / "2" / "model.safetensors").read_bytes()
    )
    with pytest.raises(RepositoryError):
        offline.version_dir("b", 1)


def test_listing_is_refreshed_after_its_ttl(tmp_path: Path, bucket: str) -> None:
    local = make_local_repo(tmp_path / "repo")
    push_repository(local, f"s3://{bucket}/ttl")
    now = [100.0]
    repo = S3Repository(
        parse_s3_uri(f"s3://{bucket}/ttl"),
        tmp_path / "cache",
        make_s3_client(),
        listing_ttl_s=30,
        clock=lambda: now[0],
    )
    assert repo.model_ids() == ["a", "b"]
    (local / "c" / "1").mkdir(parents=True)
    (local / "c" / "1" / "manifest.json").write_text((local / "b" / "1" / "manifest.json").read_text())
    (local / "c" / "1" / "model.safetensors").write_bytes(b"c")
    push_repository(local, f"s3://{bucket}/ttl")
    now[0] += 29
    assert repo.model_ids() == ["a", "b"], "within the TTL the listing is reused"
    now[0] += 2
    assert repo.model_ids() == ["a", "b", "c"]
    repo.refresh()
    assert repo.versions("c") == [1]


def test_checksum_mismatch_is_refused_and_leaves_no_partial_version(tmp_path: Path, bucket: str) -> None:
    client = make_s3_client()
    name, _, top = bucket.partition("/")
    client.put_object(
        Bucket=name, Key=f"{top}/m/bad/1/model.safetensors", Body=b"x" * 64, Metadata={"sha256": "0" * 64}
    )
    manifest = {"format": "safetensors", "task": "feature-extraction", "weights": "model.safetensors"}
    client.put_object(Bucket=name, Key=f"{top}/m/bad/1/manifest.json", Body=json.dumps(manifest).encode())
    repo = open_s3_repository(f"s3://{bucket}/m", cache_dir=tmp_path / "cache")
    assert repo.versions("bad") == [1]
    with pytest.raises(RepositoryError, match="sha256"):
        repo.version_dir("bad", 1)
    assert not repo.is_cached("bad", 1)
    assert not (repo.root / "bad" / "1").exists()
    assert not any(p.name.startswith((".sync-", ".part-")) for p in (tmp_path / "cache").rglob("*"))


def test_concurrent_syncs_of_one_version_agree(tmp_path: Path, bucket: str) -> None:
    push_repository(make_local_repo(tmp_path / "repo"), f"s3://{bucket}/c")
    cache = tmp_path / "cache"
    results: list[Path] = []
    errors: list[BaseException] = []

    def sync() -> None:
        try:
            results.append(open_s3_repository(f"s3://{bucket}/c", cache_dir=cache).version_dir("a", 2))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sync) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(results)) == 1
    assert (results[0] / "model.safetensors").read_bytes() == (
        tmp_path / "repo/a/2/model.safetensors"
    ).read_bytes()


class _Recording:
    """Wraps a real client and records upload order."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.uploaded: list[str] = []

    def upload_file(self, filename: str, bucket: str, key: str, **kwargs: Any) -> None:
        self.uploaded.append(key)
        self.inner.upload_file(filename, bucket, key, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_push_uploads_manifests_last(tmp_path: Path, bucket: str) -> None:
    client = _Recording(make_s3_client())
    push_repository(make_local_repo(tmp_path / "repo"), f"s3://{bucket}", client=client)
    kinds = [k.endswith("manifest.json") for k in client.uploaded]
    assert kinds == sorted(kinds), "every manifest comes after every other file"
    assert kinds.count(True) == 3


def test_models_push_cli(tmp_path: Path, bucket: str) -> None:
    local = make_local_repo(tmp_path / "repo")
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "inferpack"),
            "models",
            "push",
            "--repository",
            str(local),
            f"s3://{bucket}/cli",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "uploaded 12" in proc.stdout + proc.stderr
    assert open_s3_repository(f"s3://{bucket}/cli", cache_dir=tmp_path / "c").model_ids() == ["a", "b"]
    shutil.rmtree(tmp_path / "c")


class _Server:
    """A real server (uvicorn, port 0) in a thread, on a given repository object."""

    def __init__(self, settings: Any, repository: Any) -> None:
        import uvicorn

        from inferpack.server.app import create_app

        config = uvicorn.Config(
            create_app(settings, repository), host="127.0.0.1", port=0, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = ""

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 180
        while not self.server.started:  # set after the lifespan loaded the start-up models
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


@pytest.mark.slow
def test_server_from_s3_answers_and_restarts_from_cache_without_s3(tmp_path: Path, bucket: str) -> None:
    """Push a real (demo MiniLM) repository, serve it from s3://, then serve it again with S3 gone."""
    import httpx

    from inferpack.repository.demo import make_demo_models
    from inferpack.settings import ServerSettings

    local = tmp_path / "repo"
    ids = make_demo_models(local, 2, task="question-answering", prefix="s3qa")
    push_repository(local, f"s3://{bucket}/zoo")
    cache = tmp_path / "cache"
    settings = ServerSettings(repository=str(tmp_path / "unused"), models=ids, inference_threads=1)
    params = {"seq_0": "How many trees?", "seq_1": "Alice planted seven apple trees behind the old mill."}

    def ask(url: str) -> list[str]:
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/v2/health/ready").status_code == 200
            return [client.get(f"/predictions/{m}", params=params).json()["detail"] for m in ids]

    with _Server(settings, open_s3_repository(f"s3://{bucket}/zoo", cache_dir=cache)) as from_s3:
        answers = ask(from_s3.url)
    assert all(a in params["seq_1"] for a in answers)
    with _Server(settings, LocalRepository(local)) as from_disk:
        assert ask(from_disk.url) == answers  # same files, same answers

    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    offline_client = make_s3_client(f"http://127.0.0.1:{dead.getsockname()[1]}")
    dead.close()
    offline = S3Repository(parse_s3_uri(f"s3://{bucket}/zoo"), cache, offline_client)
    with _Server(settings, offline) as restarted:
        assert ask(restarted.url) == answers


def test_server_settings_keep_an_s3_repository_uri() -> None:
    from inferpack.settings import load_settings

    settings = load_settings(None, {"server": {"repository": "s3://bucket/prefix"}})
    assert str(settings.server.repository) == "s3://bucket/prefix"


def test_cache_cap_evicts_least_recently_used_versions(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INFERPACK_S3_CACHE_MAX_MB: each sync that would pass the cap evicts the least recently used
    versions, never the one asked for, and an evicted version is downloaded again when asked for."""
    local = make_local_repo(tmp_path / "repo")
    push_repository(local, f"s3://{bucket}/r")
    cache = tmp_path / "cache"
    # a/1 (~3.1 kB) + b/1 fit, a/2 (~5 kB) does not fit next to a/1
    monkeypatch.setenv("INFERPACK_S3_CACHE_MAX_MB", str(7000 / (1024 * 1024)))
    repo = open_repository(f"s3://{bucket}/r", cache_dir=cache)
    assert isinstance(repo, S3Repository) and repo.cache_max_bytes == 7000
    repo.version_dir("a", 1)
    repo.version_dir("b", 1)
    os.utime(repo.root / "a" / "1" / SYNC_RECORD, (1, 1))  # a/1 least recently used
    repo.version_dir("a", 2)
    assert not repo.is_cached("a", 1) and repo.is_cached("b", 1) and repo.is_cached("a", 2)
    assert sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) <= 7000
    assert _sha(repo.version_dir("a", 1) / "model.safetensors") == _sha(
        local / "a" / "1" / "model.safetensors"
    )
    assert sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) <= 7000
