"""Bulk inference: ``eval`` and ``segment`` under torchrun (gloo, CPU), resumable ``segment``, shard input."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_cli import SCRIPT, groupvit_cli

from groupvit.parallel import my_slice, num_rounds
from groupvit.segment.inputs import collect_inputs

SHAPES = "circle,square,triangle,star,heart,cross"
TORCHRUN = Path(sys.executable).parent / "torchrun"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # torchrun's default per process; runs compared bit for bit also pass --threads 1


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node nproc groupvit ARGS`` (CPU, gloo)."""
    if not TORCHRUN.is_file():
        pytest.fail(f"torchrun is not installed beside {sys.executable}")
    env = {**os.environ, **ONE_THREAD, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([str(TORCHRUN), "--standalone", f"--nproc-per-node={nproc}", str(SCRIPT), *args],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    proc = groupvit_cli("synth", "eval", str(root), "--num", "7", "--size", "64", "--seed", "4")
    assert proc.returncode == 0, proc.stderr
    return root


def images_of(scenes: Path) -> Path:
    return scenes / "VOC2012" / "JPEGImages"


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_slices_and_rounds_in_one_process():
    assert my_slice(list(range(5))) == [0, 1, 2, 3, 4]
    assert num_rounds(7, 2) == 4 and num_rounds(0, 3) == 0 and num_rounds(6, 3) == 2


def test_eval_on_two_processes_equals_one(scenes, tmp_path):
    common = ("eval", "--root", str(scenes), "--weights", "synthetic-small", "--threads", "1",
              "--mode", "whole",
              "--short-side", "64", "--batch-size", "2", "--group-oracle", "--quiet")
    one = torchrun(1, *common, "--out", str(tmp_path / "one.json"))
    assert one.returncode == 0, one.stderr
    two = torchrun(2, *common, "--out", str(tmp_path / "two.json"))
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("mIoU") == one.stdout.count("mIoU")  # only rank 0 prints the table
    a = json.loads((tmp_path / "one.json").read_text())["results"]
    b = json.loads((tmp_path / "two.json").read_text())["results"]
    assert a["num_images"] == b["num_images"] == 7
    for key in ("mIoU", "group_oracle_mIoU", "mAcc", "aAcc", "per_class"):
        assert a[key] == b[key], key


def test_segment_on_two_processes_writes_the_same_files(scenes, tmp_path):
    common = ("segment", str(images_of(scenes)), "--classes", SHAPES, "--weights", "synthetic-small", "--threads", "1",
              "--mode", "whole", "--short-side", "64", "--batch-size", "2")
    one = torchrun(1, *common, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = torchrun(2, *common, "--out", str(tmp_path / "two"), "--skip-existing")
    assert two.returncode == 0, two.stderr
    assert "7 written, 0 skipped" in two.stderr and "over 2 processes" in two.stderr
    a, b = pngs(tmp_path / "one"), pngs(tmp_path / "two")
    assert len(a) == 3 * 7 and a == b
    lines = [json.loads(line) for line in (tmp_path / "two" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(entry["input"] for entry in lines) == sorted(str(p) for p in images_of(scenes).glob("*.jpg"))
    assert {entry["status"] for entry in lines} == {"written"}


def test_a_run_without_skip_existing_records_its_settings_and_a_resume_with_others_is_refused(scenes, tmp_path):
    common = ["segment", str(images_of(scenes)), "--weights", "synthetic-small", "--threads", "1",
              "--mode", "whole",
              "--short-side", "64", "--batch-size", "4", "--out", str(tmp_path / "out"), "--no-groups"]
    first = torchrun(1, *common, "--classes", SHAPES)
    assert first.returncode == 0, first.stderr
    before = pngs(tmp_path / "out")
    # Two processes: rank 0 refuses, and every rank leaves (the timeout of torchrun() catches a hang).
    other = torchrun(2, *common, "--classes", "circle,star", "--skip-existing")
    assert other.returncode != 0
    assert f"--skip-existing: {tmp_path / 'out'} was written with other settings (classes)" in other.stderr
    assert pngs(tmp_path / "out") == before
    same = torchrun(2, *common, "--classes", SHAPES, "--skip-existing")
    assert same.returncode == 0 and "0 written, 7 skipped" in same.stderr, same.stderr


def test_killed_segment_resumes_without_rewriting(scenes, tmp_path):
    # 30 inputs at 256 px: long enough to be killed part-way.
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(30):
        source = sorted(images_of(scenes).glob("*.jpg"))[i % 7]
        shutil.copy(source, folder / f"img{i:02d}.jpg")
    common = ["segment", str(folder), "--classes", SHAPES, "--weights", "synthetic-small", "--threads", "1",
              "--mode", "whole", "--short-side", "256", "--batch-size", "1", "--quiet"]
    full = groupvit_cli(*common, "--out", str(tmp_path / "full"), env=ONE_THREAD)
    assert full.returncode == 0, full.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen([str(SCRIPT), *common, "--out", str(out)], env={**os.environ, **ONE_THREAD},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*_labels.png"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    labels = [name for name in finished if name.endswith("_labels.png")]
    assert 3 <= len(labels) < 30, "the run was not killed part-way"

    again = groupvit_cli(*common, "--out", str(out), "--skip-existing", env=ONE_THREAD)
    assert again.returncode == 0, again.stderr
    assert pngs(out) == pngs(tmp_path / "full")
    for stem in (name.removesuffix("_labels.png") for name in labels):
        for kind in ("labels", "overlay", "groups"):
            name = f"{stem}_{kind}.png"
            assert out.joinpath(name).stat().st_mtime_ns == finished[name], f"{name} was rewritten"
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sum(entry["status"] == "skipped" for entry in entries) == len(labels)

    # Other settings: refused, nothing touched.
    other = groupvit_cli(*common[:3], "circle,star", *common[4:], "--out", str(out), "--skip-existing")
    assert other.returncode == 2
    assert other.stderr.strip().splitlines() == [
        "groupvit segment: 1 intra-op thread (requested)",
        f"groupvit segment: error: --skip-existing: {out} was written with other settings (classes); use another "
        "--out, or run without --skip-existing to overwrite"]


def test_killed_two_process_run_resumes_to_the_unkilled_outputs(scenes, tmp_path):
    """torchrun, 2 processes, SIGKILL to both part-way; --skip-existing finishes it. A broken input is failed and
    recorded as such in the manifest; no temporary file outlives the resume."""
    folder = tmp_path / "in"
    folder.mkdir()
    sources = sorted(images_of(scenes).glob("*.jpg"))
    for i in range(24):
        shutil.copy(sources[i % 7], folder / f"img{i:02d}.jpg")
    (folder / "img07.jpg").write_bytes(b"not a jpeg")
    common = ["segment", str(folder), "--classes", SHAPES, "--weights", "synthetic-small", "--mode", "whole",
              "--short-side", "256", "--batch-size", "1", "--quiet", "--skip-existing"]
    full = torchrun(2, *common, "--out", str(tmp_path / "full"))
    assert full.returncode == 1, full.stderr  # one input failed, the others written

    out = tmp_path / "killed"
    proc = subprocess.Popen([str(TORCHRUN), "--standalone", "--nproc-per-node=2", str(SCRIPT), *common, "--out",
                             str(out)], env={**os.environ, **ONE_THREAD, "CUDA_VISIBLE_DEVICES": ""},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while len(list(out.glob("*_labels.png"))) < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
    proc.wait()
    labels = list(out.glob("*_labels.png"))
    assert 4 <= len(labels) < 23, "the run was not killed part-way"
    stale = out / ".img20_labels.png.k1ll3d.tmp"  # what a kill in the middle of a write leaves
    stale.write_bytes(b"partial")

    again = torchrun(2, *common, "--out", str(out))
    assert again.returncode == 1, again.stderr
    assert pngs(out) == pngs(tmp_path / "full") and len(pngs(out)) == 23 * 3
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    failed = [entry for entry in entries if entry["status"] == "failed"]
    assert len(failed) == 2 and {entry["input"] for entry in failed} == {str(folder / "img07.jpg")}  # once a run
    assert all("img07.jpg" in entry["error"] and "not an image" in entry["error"] for entry in failed)
    written = {Path(entry["input"]).name for entry in entries if entry["status"] == "written"}
    skipped = {Path(entry["input"]).name for entry in entries if entry["status"] == "skipped"}
    assert written | skipped == {f"img{i:02d}.jpg" for i in range(24)} - {"img07.jpg"}


def test_named_weights_are_downloaded_once_by_rank_0(scenes, tmp_path):
    from test_pretrained import Release

    from groupvit.pretrained import BUNDLED, local_path

    payload = local_path(BUNDLED).read_bytes()  # the bundled model, served as a release
    digest = hashlib.sha256(payload).hexdigest()[:8]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Release)
    httpd.payload, httpd.truncate, httpd.requests = payload, 0, 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, **ONE_THREAD, "CUDA_VISIBLE_DEVICES": "", "GROUPVIT_CACHE": str(tmp_path / "cache"),
               "GROUPVIT_TEST_RELEASE_URL": f"http://127.0.0.1:{httpd.server_port}",
               "GROUPVIT_TEST_RELEASE_NAME": "test-release", "GROUPVIT_TEST_RELEASE_FILE": f"test-{digest}.pt"}
        proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc-per-node=2",
                               str(Path(__file__).parent / "release_cli.py"), "segment", str(images_of(scenes)),
                               "--classes", SHAPES, "--weights", "test-release", "--mode", "whole", "--short-side",
                               "64", "--quiet", "--out", str(tmp_path / "out")], env=env, capture_output=True,
                              text=True, timeout=300)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert proc.returncode == 0, proc.stderr
    assert httpd.requests == 1
    assert (tmp_path / "cache" / f"test-{digest}.pt").read_bytes() == payload
    assert len(list((tmp_path / "out").glob("*_labels.png"))) == 7


def test_segment_reads_webdataset_shards(scenes, tmp_path):
    images = sorted(images_of(scenes).glob("*.jpg"))
    table = tmp_path / "captions.csv"
    table.write_text("file,caption\n" + "".join(f"{p.name},a scene\n" for p in images))
    proc = groupvit_cli("shards", "--images", str(images_of(scenes)), "--captions", str(table),
                        "--out", str(tmp_path / "shards"), "--shard-size", "3")
    assert proc.returncode == 0, proc.stderr
    shards = sorted((tmp_path / "shards").glob("*.tar"))
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    pattern = str(shards[0].parent / "shard-{000000..000002}.tar")
    inputs = collect_inputs([pattern])
    assert [item.stem for item in inputs] == [f"{i:09d}" for i in range(7)]
    common = ("--classes", SHAPES, "--weights", "synthetic-small", "--threads", "1", "--mode", "whole",
              "--short-side", "64",
              "--no-groups", "--quiet")
    proc = groupvit_cli("segment", pattern, *common, "--out", str(tmp_path / "from_shards"))
    assert proc.returncode == 0, proc.stderr
    proc = groupvit_cli("segment", *map(str, images), *common, "--out", str(tmp_path / "from_files"))
    assert proc.returncode == 0, proc.stderr
    from_files = pngs(tmp_path / "from_files")
    for i, image in enumerate(images):  # the shards hold the original bytes, in table order
        for kind in ("labels", "overlay"):
            assert pngs(tmp_path / "from_shards")[f"{i:09d}_{kind}.png"] == from_files[f"{image.stem}_{kind}.png"]
    missing = groupvit_cli("segment", str(tmp_path / "nope-{0..1}.tar"), *common)
    assert missing.returncode == 2 and "no such shard" in missing.stderr
