"""Intra-op thread counts from the cores a process can use: affinity, cgroup quota, torchrun share, load."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import groupvit.cli
import groupvit.threads as threads
from groupvit.errors import ConfigError, InputError
from groupvit.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_cgroup_v2_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_quota(tmp_path) is None


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_quota(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_quota(tmp_path) is None
    assert threads.cgroup_quota(tmp_path / "missing") is None


def test_cpu_times_sum_the_allowed_cpus_only(tmp_path):
    # user nice system idle iowait irq softirq steal
    stat = tmp_path / "stat"
    stat.write_text("cpu  30 0 10 60 0 0 0 0 0 0\n"
                    "cpu0 10 0 5 20 5 0 0 0 0 0\n"
                    "cpu1 20 0 5 40 0 0 0 0 0 0\n"
                    "intr 1 2 3\n")
    assert threads._cpu_times({0}, stat) == (15.0, 40.0)  # idle + iowait = 25
    assert threads._cpu_times({0, 1}, stat) == (40.0, 105.0)
    assert threads._cpu_times({7}, stat) == (0.0, 0.0)


@pytest.mark.skipif(not os.path.exists("/proc/stat") or not hasattr(os, "sched_setaffinity"),
                    reason="needs Linux /proc/stat and CPU affinity")
def test_busy_cores_sees_a_process_spinning_on_one_cpu():
    cpu = threads.affinity_cpus()[0]
    spin = subprocess.Popen([sys.executable, "-c",
                             f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        time.sleep(0.3)
        busy = threads.busy_cores([cpu], seconds=0.5)
    finally:
        spin.kill()
        spin.wait()
    assert busy > 0.7


def test_choose_threads_takes_quota_load_and_processes(monkeypatch):
    monkeypatch.setattr(threads, "affinity_cpus", lambda: list(range(8)))
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    monkeypatch.setattr(threads, "busy_cores", lambda cpus: 0.0)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert threads.choose_threads().threads == 8
    monkeypatch.setattr(threads, "cgroup_quota", lambda: 2.5)  # floor(2.5 + 0.5)
    assert threads.choose_threads().threads == 3
    monkeypatch.setattr(threads, "busy_cores", lambda cpus: 1.0)
    choice = threads.choose_threads()
    assert (choice.threads, choice.quota, choice.busy) == (2, 2.5, 1.0)
    assert choice.describe() == ("2 intra-op threads (8 CPUs allowed, quota 2.5 cores, 1.0 busy elsewhere; "
                                 "--threads N overrides)")
    monkeypatch.setattr(threads, "busy_cores", lambda cpus: 7.9)
    assert threads.choose_threads().threads == 1  # never below one
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    monkeypatch.setattr(threads, "busy_cores", lambda cpus: 0.0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun --nproc_per_node 4
    assert threads.choose_threads().threads == 2
    assert threads.choose_threads(sample=False).busy == 0.0


def test_requested_threads_win_and_are_checked(monkeypatch):
    monkeypatch.setattr(threads, "busy_cores", lambda cpus: pytest.fail("no load sample when a count is given"))
    choice = threads.apply_threads(1)
    assert choice.requested and choice.threads == 1 and torch.get_num_threads() == 1
    assert choice.describe() == "1 intra-op thread (requested)"
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(InputError, match="threads must be a positive count"):
            threads.check_threads(bad)


def test_cli_threads_option(tmp_path, capsys):
    status = groupvit.cli.main(["groups", "--threads", "-2", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err == ["groupvit groups: error: threads must be a positive count, or 0 to choose "
                                   "from the free cores; got -2"]


def test_train_threads_key(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: {preset: tiny}\ndata: {sources: [{type: random, size: 32}]}\n")
    assert load_config(str(config), ["train.threads=2"]).train.threads == 2
    with pytest.raises(ConfigError, match="train.threads must be >= 0"):
        load_config(str(config), ["train.threads=-1"])


def test_train_command_says_its_threads(tmp_path, capsys):
    out = tmp_path / "run"
    status = groupvit.cli.main(["train", "--config", str(ROOT / "configs" / "tiny-cpu.yaml"), "--output", str(out),
                                "--threads", "1", "train.max_steps=1", "train.progress=false"])
    assert status == 0 and torch.get_num_threads() == 1
    assert "groupvit train: CPU: 1 intra-op thread (requested)" in capsys.readouterr().err.splitlines()


def test_a_resumed_run_keeps_the_thread_count_it_started_with(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(threads, "busy_cores", lambda cpus: 0.0)
    monkeypatch.setattr(threads, "affinity_cpus", lambda: [0])
    argv = ["train", "--config", str(ROOT / "configs" / "tiny-cpu.yaml"), "--output", str(out), "--resume", "auto",
            "train.progress=false"]
    assert groupvit.cli.main([*argv, "train.max_steps=1"]) == 0
    assert "threads: 1" in (out / "config.yaml").read_text()  # the count chosen is recorded with the run
    monkeypatch.setattr(threads, "affinity_cpus", lambda: [0, 1, 2])  # the machine has changed since
    capsys.readouterr()
    assert groupvit.cli.main([*argv, "train.max_steps=2"]) == 0
    assert torch.get_num_threads() == 1
    assert "groupvit train: CPU: 1 intra-op thread (as recorded by the run)" in capsys.readouterr().err.splitlines()
