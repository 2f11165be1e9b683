"""bench/gpu.sh and bench/gpu_report.py, everything about them that can be checked without a
GPU: argument parsing, the steps and their --device plumbing (--dry-run), a clean exit 0 with
a clear message where there is no CUDA device, the gpu-marked tests skipping with their
reason, and the report section it writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu.sh"
PYTEST_GPU = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider"]


def run(*args: str, hide_cuda: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    if hide_cuda:  # torch then sees no CUDA device, even on a GPU machine
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_dry_run_lists_every_step_on_the_device(tmp_path):
    done = run("--dry-run", "--device", "cuda:1", "--budget-s", "240", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stdout.splitlines() if line.startswith("step ")]
    assert [s.split()[1] for s in steps] == ["tests", "serving", "generation", "training", "report:"]
    assert "pytest -m gpu" in steps[0] and "(limit 50s)" in steps[0]  # limits scale with the budget
    for step, script in zip(steps[1:4], ("serving", "generation", "training"), strict=True):
        assert f"bench/{script}.py --device cuda:1" in step
    assert not list(tmp_path.glob("*.log"))  # nothing ran


def test_bad_arguments_are_refused_with_status_2():
    for args, said in [
        (["--bogus"], "unknown argument: --bogus"),
        (["--device", "cpu"], "--device must be cuda or cuda:N"),
        (["--budget-s", "soon"], "--budget-s must be a whole number"),
        (["--device"], "--device needs a value"),
    ]:
        done = run(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert said in done.stderr


def test_without_cuda_it_exits_0_and_says_so(tmp_path):
    docs = tmp_path / "benchmarks.md"
    done = run("--out", str(tmp_path / "out"), "--docs", str(docs))
    assert done.returncode == 0, done.stderr
    assert "no CUDA device here" in done.stdout and "nothing to run" in done.stdout
    assert not docs.exists() and not (tmp_path / "out" / "steps.tsv").exists()


def test_every_benchmark_takes_device():
    for script in ("serving", "generation", "training"):
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / f"{script}.py"), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        assert "--device" in done.stdout, script


def test_the_gpu_tests_skip_naming_the_reason_without_cuda():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        [*PYTEST_GPU, "tests/unit/server/test_device_paths.py"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "4 skipped" in done.stdout and "4 deselected" in done.stdout, done.stdout[-3000:]
    assert "no CUDA device (torch.cuda.is_available() is False)" in done.stdout


def test_the_report_section(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_report
    finally:
        sys.path.remove(str(ROOT / "bench"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "steps.tsv").write_text("tests\t0\t41\t100\nserving\t124\t170\t170\n")
    sections = out / "sections.md"
    sections.write_text("# Benchmarks\n\nintro\n\n## Serving: many adapters (bench/serving.py)\n\n| a |\n")
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    argv = [
        "--out",
        str(out),
        "--sections",
        str(sections),
        "--docs",
        str(docs),
        "--device-name",
        "Test GPU 1",
    ]
    assert gpu_report.main(argv) == 1  # a step failed: the report says so and so does the status
    text = docs.read_text()
    assert "## Other\n\nkept" in text
    assert "## GPU run (bench/gpu.sh)" in text and "**Test GPU 1**" in text
    assert "| serving | 124 (hit its time limit) | 170 | 170 |" in text
    assert "### Serving: many adapters (bench/serving.py)" in text
    assert "\n## Serving" not in text
    (out / "steps.tsv").write_text("tests\t0\t41\t100\n")
    assert gpu_report.main(argv) == 0
    assert docs.read_text().count("## GPU run (bench/gpu.sh)") == 1  # replaced, not appended twice
