"""bench/gpu_paths.py, the GPU check, on a CPU machine: its paths name launch files and configs that exist, a run's
metrics are summarised, a failing path is reported with its log and the next one still runs, and the deadline skips
what no longer fits."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_gpu_paths", REPO / "bench" / "gpu_paths.py")
gpu_paths = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_paths)


def test_every_path_names_files_that_exist(tmp_path):
    paths = gpu_paths.paths(tmp_path, tmp_path / "demo")
    names = [p["name"] for p in paths]
    assert len(set(names)) == len(names) and names[-1] == "demo_lm_generate_evaluate"
    for p in paths:
        for arg in p["cmd"]:
            if arg.endswith((".yaml", ".py")) and "/" in arg:
                assert Path(arg).is_file(), (p["name"], arg)


def test_run_summary_reads_the_rows_of_this_run(tmp_path):
    rows = [{"step": 5, "time": 90.0, "train/loss": 9.0},             # an earlier run in the same folder
            {"step": 10, "time": 100.0, "train/loss": 3.0, "train/target_tokens_per_s": 50.0},
            {"step": 20, "time": 105.0, "eval/loss": 2.5},
            {"step": 30, "time": 110.0, "train/loss": 2.0, "train/target_tokens_per_s": 60.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = gpu_paths.run_summary(tmp_path, since=95.0)
    assert got == {"last_step": 30, "last_loss": 2.0, "steps_per_s": 2.0, "target_tokens_per_s": 60.0}
    assert gpu_paths.run_summary(tmp_path / "missing", since=0.0) == {}


def test_a_failing_path_is_reported_and_the_deadline_skips(tmp_path, monkeypatch):
    fail = dict(name="fails", limit=30, run=tmp_path / "a",
                cmd=[sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    ok = dict(name="works", limit=30, run=tmp_path / "b", cmd=[sys.executable, "-c", "print('fine')"])
    slow = dict(name="slow", limit=30, run=tmp_path / "c", cmd=[sys.executable, "-c", "import time; time.sleep(60)"])
    late = dict(name="late", limit=30, run=tmp_path / "d", cmd=[sys.executable, "-c", "print('never')"])
    monkeypatch.setattr(gpu_paths, "paths", lambda work, demo: [fail, ok, slow, late])
    monkeypatch.setattr(gpu_paths, "MIN_LEFT_S", 1.0)
    monkeypatch.setattr(gpu_paths, "MARGIN_S", 0.0)
    results = gpu_paths.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                              "--deadline-s", "4"])
    by_name = {r["path"]: r for r in results}
    assert by_name["fails"]["rc"] == 3 and "boom" in by_name["fails"]["log_tail"]
    assert by_name["works"]["rc"] == 0
    assert by_name["slow"]["rc"] == "timeout"            # its limit was cut to what the deadline left
    assert by_name["late"]["rc"] == "skipped (deadline)"
    report = json.loads((tmp_path / "out" / "gpu_paths.json").read_text())
    assert [r["path"] for r in report["results"]] == ["fails", "works", "slow", "late"]
    assert "| fails | 3 |" in (tmp_path / "out" / "gpu_paths.md").read_text()


def test_gpu_memory_counts_only_the_paths_own_processes():
    import os
    import subprocess
    mine = os.getpid()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        listed = f"{mine}, 700\n{other.pid}, 5000\n999999999, 300\n[N/A], [N/A]\n"   # ended pid, unreadable row
        assert gpu_paths.session_gpu_mib(listed, os.getsid(mine)) == 700
        assert gpu_paths.session_gpu_mib(listed, other.pid) == 5000          # its own session, as a path's launcher
        assert gpu_paths.session_gpu_mib(f"{other.pid}, 5000\n", os.getsid(mine)) is None
        assert gpu_paths.session_gpu_mib("", os.getsid(mine)) is None
    finally:
        other.kill()
        other.wait()
