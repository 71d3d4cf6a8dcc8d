"""Weights by name: download from a local HTTP server, verification, cache, offline message, CLI listing."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading

import pytest
import torch

import groupvit
from groupvit import pretrained
from groupvit.errors import WeightsError
from groupvit.fileio import atomic_path


class Release(http.server.BaseHTTPRequestHandler):
    """Serves ``server.payload`` at any path; ``server.truncate`` bytes are announced but never sent."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        payload, truncate = self.server.payload, self.server.truncate
        self.server.requests += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload[: len(payload) - truncate])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Release)
    httpd.payload, httpd.truncate, httpd.requests = b"", 0, 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def tiny_bytes(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "src.pt"
    groupvit.save_checkpoint(groupvit.create_model("tiny"), path)
    return path.read_bytes()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("GROUPVIT_CACHE", str(folder))
    return folder


def release_entry(monkeypatch, url: str, payload: bytes, name: str = "tiny-release") -> pretrained.NamedWeights:
    digest = hashlib.sha256(payload).hexdigest()[:8]
    entry = pretrained.NamedWeights(name, f"tiny_release-{digest}.pth", f"{url}/tiny_release-{digest}.pth", "test")
    monkeypatch.setitem(pretrained.WEIGHTS, name, entry)
    return entry


def test_hash_prefix_is_read_from_the_file_name():
    assert pretrained.WEIGHTS["gcc-yfcc"].sha256_prefix == "879422e0"
    assert pretrained.WEIGHTS["gcc-redcaps"].sha256_prefix == "3dd09a76"
    assert pretrained.WEIGHTS["synthetic-small"].sha256_prefix is None


def test_download_then_cache_hit_without_network(server, tiny_bytes, cache, monkeypatch):
    server.payload = tiny_bytes
    entry = release_entry(monkeypatch, f"http://127.0.0.1:{server.server_port}", tiny_bytes)
    model = groupvit.load_pretrained("tiny-release")
    assert (cache / entry.filename).read_bytes() == tiny_bytes
    assert sorted(p.name for p in cache.iterdir()) == [entry.filename]
    assert server.requests == 1
    server.shutdown()
    server.server_close()
    again = groupvit.load_pretrained("tiny-release")
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_hash_mismatch_is_an_error_and_leaves_the_cache_empty(server, tiny_bytes, cache, monkeypatch):
    server.payload = tiny_bytes[:-1] + bytes([tiny_bytes[-1] ^ 1])
    release_entry(monkeypatch, f"http://127.0.0.1:{server.server_port}", tiny_bytes)
    with pytest.raises(WeightsError, match="expected .*nothing was cached") as err:
        pretrained.resolve("tiny-release", progress=False)
    assert "\n" not in str(err.value)
    assert list(cache.iterdir()) == []


def test_interrupted_download_leaves_no_entry_and_the_next_call_completes(server, tiny_bytes, cache, monkeypatch):
    server.payload, server.truncate = tiny_bytes, len(tiny_bytes) // 2
    entry = release_entry(monkeypatch, f"http://127.0.0.1:{server.server_port}", tiny_bytes)
    with pytest.raises(WeightsError, match="cannot download|stopped after"):
        pretrained.resolve("tiny-release", progress=False)
    assert list(cache.iterdir()) == []
    server.truncate = 0
    assert pretrained.resolve("tiny-release", progress=False).read_bytes() == tiny_bytes
    assert sorted(p.name for p in cache.iterdir()) == [entry.filename]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_offline_and_not_cached_gives_one_line_with_the_url_and_the_manual_path(cache, tiny_bytes, monkeypatch):
    entry = release_entry(monkeypatch, f"http://127.0.0.1:{closed_port()}", tiny_bytes)
    with pytest.raises(WeightsError) as err:
        groupvit.load_pretrained("tiny-release")
    message = str(err.value)
    assert "\n" not in message
    assert entry.url in message and str(cache / entry.filename) in message
    assert not cache.exists() or list(cache.iterdir()) == []


def test_a_file_placed_by_hand_is_used(cache, tiny_bytes, monkeypatch):
    entry = release_entry(monkeypatch, f"http://127.0.0.1:{closed_port()}", tiny_bytes)
    cache.mkdir()
    (cache / entry.filename).write_bytes(tiny_bytes)
    expected = groupvit.create_model("tiny").config
    assert groupvit.load_pretrained("tiny-release").config == expected


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(WeightsError, match="gcc-yfcc, gcc-redcaps, synthetic-small"):
        pretrained.resolve("gcc-laion")


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("GROUPVIT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pretrained.cache_dir() == tmp_path / "xdg" / "groupvit"
    monkeypatch.setenv("GROUPVIT_CACHE", str(tmp_path / "mine"))
    assert pretrained.local_path("gcc-yfcc") == tmp_path / "mine" / "group_vit_gcc_yfcc_30e-879422e0.pth"


def test_bundled_model_is_known_by_name():
    model = groupvit.load_pretrained("synthetic-small")
    assert model.config.vision.image_size == 64 and model.config.vision.stem == "conv"


def test_weights_command_lists_names_paths_and_presence(cache):
    cache.mkdir()
    (cache / pretrained.WEIGHTS["gcc-redcaps"].filename).write_bytes(b"placed by hand")
    env = {**os.environ, "GROUPVIT_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-m", "groupvit.cli", "weights"], env=env, capture_output=True, text=True,
                         check=True).stdout
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    assert "not downloaded" in lines["gcc-yfcc"] and str(cache / pretrained.WEIGHTS["gcc-yfcc"].filename) in out
    assert "present" in lines["gcc-redcaps"] and "not downloaded" not in lines["gcc-redcaps"]
    assert "present" in lines["synthetic-small"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_get_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "out.json") as tmp:
            tmp.write_text("{}")
        with open(tmp_path / "plain.json", "w") as handle:
            handle.write("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "out.json").stat().st_mode == (tmp_path / "plain.json").stat().st_mode
