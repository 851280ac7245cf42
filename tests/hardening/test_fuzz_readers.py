"""Fuzzing the readers: 500+ malformed inputs, each must give a Volume or a PromptOnceError with a message.

The corpus (``fuzzcorpus.build_corpus``, deterministic) is run in a subprocess whose address space
is limited to :data:`MEMORY_BOUND` bytes (``RLIMIT_AS``), with :data:`PER_CASE_S` seconds per case
(``signal.alarm``) and :data:`TOTAL_S` for the whole run. A reader that raises anything but a
PromptOnceError, hangs, needs memory past the bound (MemoryError), accepts an input that must be
refused, unpickles a payload, or writes outside its extraction folder fails the test. Run with ``-s``
to see the counts.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from fuzzcorpus import build_corpus  # tests/hardening/fuzzcorpus.py

HERE = Path(__file__).resolve().parent
#: Address-space bound of the subprocess that reads the corpus (bytes).
MEMORY_BOUND = 2 * 2**30
#: Time bound of one case and of the whole corpus (seconds).
PER_CASE_S = 10
TOTAL_S = 240

pytestmark = [pytest.mark.timeout(TOTAL_S + 120), pytest.mark.slow]


def _limit_memory() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BOUND, MEMORY_BOUND))


def _bounded_python(args: list[str], tmpdir: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TMPDIR=str(tmpdir), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1]), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, *args], env=env, preexec_fn=_limit_memory, capture_output=True, text=True, timeout=timeout,
        cwd=str(HERE),
    )  # fmt: skip


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory) -> tuple[dict, list[dict], Path]:
    root = tmp_path_factory.mktemp("fuzz")
    cases = build_corpus(root / "corpus")
    corpus_json = root / "corpus.json"
    corpus_json.write_text(json.dumps(cases))
    tmpdir = root / "tmp"
    tmpdir.mkdir()
    out = root / "result.json"
    proc = _bounded_python(["fuzzcorpus.py", str(corpus_json), str(out), str(PER_CASE_S)], tmpdir, TOTAL_S)
    assert proc.returncode == 0, f"the corpus runner died (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    result = json.loads(out.read_text())
    result["tmpdir_after"] = sorted(p.name for p in tmpdir.iterdir())
    return result, cases, root


def test_memory_bound_is_enforced(tmp_path):
    """The bound is real: in the same limited subprocess, allocating past it fails."""
    code = "import numpy as np\ntry:\n    np.ones(3 * 2**30, np.uint8)\nexcept MemoryError:\n    print('refused')\n"
    proc = _bounded_python(["-c", code], tmp_path, 60)
    assert proc.stdout.strip() == "refused", proc.stderr


def test_corpus_yields_volume_or_readable_error(corpus_run):
    result, cases, _ = corpus_run
    counts = result["counts"]
    print(
        f"\nfuzz corpus: {result['inputs']} inputs, {counts.get('valid', 0)} valid, {counts.get('error', 0)} "
        f"PromptOnceError, crashes {counts.get('crash', 0)}, hangs {counts.get('hang', 0)}, accepted-but-must-refuse "
        f"{counts.get('bad_valid', 0)}, empty messages {counts.get('empty_message', 0)}, escapes {counts.get('escaped', 0)}; "
        f"{result['seconds']} s, peak RSS {result['peak_rss_mb']} MB (bound {MEMORY_BOUND / 2**30:.0f} GiB address space)"
    )
    for cat, c in sorted(result["per_category"].items()):
        print(f"  {cat:10s} {c}")
    assert result["inputs"] == len(cases) >= 500
    shown = "\n".join(f"{f['id']}: {f['outcome']}: {f['detail'][:400]}" for f in result["failures"][:15])
    assert not result["failures"], f"{len(result['failures'])} inputs were not handled:\n{shown}"
    assert set(counts) <= {"valid", "error"}
    # both outcomes occur in every family (the corpus is not all-broken nor all-harmless)
    for cat in ("nifti", "dicom", "image", "numpy", "zip", "reference"):
        assert result["per_category"][cat].get("error", 0) > 0, cat
        assert result["per_category"][cat].get("valid", 0) > 0, cat


def test_no_file_left_or_escaped(corpus_run):
    result, cases, root = corpus_run
    # temporary extraction folders are all removed, and nothing landed outside them
    assert result["temp_leftovers"] == [] and result["tmpdir_after"] == []
    escaped = [p for p in root.rglob("escaped*")] + list(root.parent.glob("escaped*"))
    assert not escaped, escaped
    sentinels = {c["sentinel"] for c in cases if c.get("sentinel")}
    assert sentinels and not any(Path(s).exists() for s in sentinels), "a pickle payload ran"
