"""scripts/gpu_check.sh, the prepared GPU check, kept from rotting on a machine without a GPU: its --dry-run runs every
piece through the same Python entry points on CPU with tiny settings, and its report turns timeouts and crashes
into failures."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from scripts_loader import load_script

PIECES = ["bench_cpu_small", "bench_gpt2_small", "paper", "sync", "liger"]


def fake_work(tmp_path: Path, results: dict) -> Path:
    """A work folder as gpu_check.sh leaves it: name -> (exit status, JSON result or None, log text)."""
    work = tmp_path / "work"
    work.mkdir(parents=True)
    (work / "pieces").write_text("\n".join(results) + "\n")
    for name, (rc, result, log) in results.items():
        (work / f"{name}.rc").write_text(f"{rc}\n")
        (work / f"{name}.seconds").write_text("7")
        (work / f"{name}.limit").write_text("130")
        (work / f"{name}.log").write_text(log)
        if result is not None:
            (work / f"{name}.json").write_text(json.dumps(result))
    return work


def test_report_counts_timeouts_and_crashes_as_failures(tmp_path, capsys):
    gpu_check = load_script("gpu_check")
    work = fake_work(tmp_path, {
        "bench_cpu_small": (0, {"status": "ok", "summary": "gelu 1,000 tok/s"}, ""),
        "paper": (124, None, "step 1\n"),                      # killed by `timeout`
        "sync": (1, None, "Traceback ...\nRuntimeError: boom\n"),  # died before writing its result
        "liger": (0, {"status": "unavailable", "summary": "liger-kernel UNAVAILABLE"}, ""),
    })
    out = tmp_path / "out"
    assert gpu_check.main(["report", "--work", str(work), "--out-dir", str(out), "--label", "t"]) == 1
    (md,) = out.glob("*-gpu-check-t.md")
    text = md.read_text()
    assert "| paper model, a few steps | FAILED | 7 (130) | TIMED OUT after 130 s |" in text
    assert "crashed (exit 1) before writing its result" in text and "RuntimeError: boom" in text
    assert "| Liger parity | UNAVAILABLE |" in text
    statuses = {p["piece"]: p["status"] for p in json.loads(md.with_suffix(".json").read_text())["pieces"]}
    assert statuses == {"bench_cpu_small": "ok", "paper": "failed", "sync": "failed", "liger": "unavailable"}
    assert "FAILED: paper, sync" in capsys.readouterr().out

    # "unavailable" is not a failure
    work = fake_work(tmp_path / "second", {"liger": (0, {"status": "unavailable", "summary": "no CUDA"}, "")})
    assert gpu_check.main(["report", "--work", str(work), "--out-dir", str(out), "--label", "u"]) == 0


@pytest.mark.slow
def test_dry_run_exercises_every_piece(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GPU_WHEELS": str(tmp_path / "no-wheels"), "TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "--out-dir", str(out)], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "| piece | status | s (limit) | result |" in done.stdout  # the summary table is printed
    (report,) = out.glob("*-gpu-check-dry-run-*.json")
    pieces = {p["piece"]: p for p in json.loads(report.read_text())["pieces"]}
    assert list(pieces) == PIECES
    assert report.with_suffix(".md").exists()

    for name in ("bench_cpu_small", "bench_gpt2_small"):
        acts = pieces[name]["report"]["activations"]
        assert list(acts) == ["gelu", "swiglu", "polynorm", "polyrelu"]
        assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in acts.values())

    sync = pieces["sync"]
    assert sync["status"] == "ok" and "no CUDA" in sync["summary"]  # the MoE step ran; sync debug needs CUDA

    paper = pieces["paper"]
    if (REPO_ROOT / "configs" / "experiment" / "paper_dense_1b.yaml").exists():
        assert paper["status"] == "ok", paper["summary"]
        assert paper["steps"] == 3 and paper["max_memory_allocated"] is None  # CPU: no CUDA peak
        assert "trainer.global_batch_size=2" in paper["overrides"]  # one micro-batch per step
        if (REPO_ROOT / "scripts" / "estimate_memory.py").exists():
            assert paper["estimate"]["peak_bytes_per_gpu"] > 0, paper["estimate"]
    else:
        assert paper["status"] == "unavailable"

    liger = pieces["liger"]
    assert liger["liger_kernel"] is None or liger["cuda"] is False  # no Liger run on this CPU machine
    if (REPO_ROOT / "tests" / "test_liger.py").exists():
        assert liger["status"] == "ok" and liger["pytest_rc"] == 0, liger["summary"]
    else:
        assert liger["status"] == "unavailable"
