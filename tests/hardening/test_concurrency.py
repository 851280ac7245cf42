"""Eight simultaneous app sessions on 127.0.0.1 (the short version of benchmarks/load_test.py).

Each session uploads its own NIfTI (distinct disc position, affine marker and case names), clicks,
runs volume scope (even sessions) or dataset scope over two volumes (odd sessions) and downloads the
NIfTI masks. Asserted: every request answered; no session receives another's file or result; every
offered file lies in the session's own random folder; guessed folders and traversal are refused; the
model queue never runs more calls at once than its limit; temp storage returns to its baseline once
the clients disconnect. Run with ``-s`` for the figures.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def _load_test_module():
    spec = importlib.util.spec_from_file_location("load_test", REPO / "benchmarks" / "load_test.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("load_test", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def load_result(tmp_path_factory):
    lt = _load_test_module()
    return lt.run_load(sessions=8, rounds=1, model="fake", model_limit=1, fake_delay=0.01, settle_s=30.0,
                       work_root=tmp_path_factory.mktemp("load"))  # fmt: skip


def test_eight_sessions_are_served_and_isolated(load_result):
    r = load_result
    lat = r["latency_s"]
    print(
        f"\nload: {r['sessions']} sessions, {r['rounds_done']} rounds, {r['requests']} requests, {r['errors']} errors, "
        f"{r['seconds']} s; latency p50 {lat['all']['p50']} s, p95 {lat['all']['p95']} s, p99 {lat['all']['p99']} s "
        f"(run p95 {lat['run']['p95']} s); model calls {r['queue']['model_calls']}, at once max "
        f"{r['queue']['max_simultaneous_model_calls']} while {r['queue']['max_simultaneous_model_requests_in_flight']} "
        f"model requests were in flight; temp files {r['temp_files']['baseline']} -> {r['temp_files']['after_sessions']} "
        f"({r['temp_files']['gradio_empty_tmp']} empty Gradio upload temps for {r['temp_files']['uploads']} uploads)"
    )
    assert r["problems"] == [], r["problems"]
    assert r["errors"] == 0 and not r["hung_sessions"]
    assert r["rounds_done"] == 8 and r["requests"] >= 8 * 5
    iso = r["isolation"]
    assert iso["n_violations"] == 0, iso["violations"]
    folders = [f for fs in iso["session_folders"].values() for f in fs]
    assert len(folders) == 8 and len(set(folders)) == 8
    assert all(re.fullmatch(r"[0-9a-f]{32}", f) for f in folders)
    assert not iso["guessed_or_traversal_served"] and not iso["offered_outside_session_folders"]


def test_model_queue_limit_is_honoured(load_result):
    q = load_result["queue"]
    assert q["model_calls"] > 0
    # several sessions had a model request in flight together, yet the model ran one call at a time
    assert q["max_simultaneous_model_requests_in_flight"] >= 2
    assert q["max_simultaneous_model_calls"] <= load_result["model_concurrency_limit"] == 1


def test_temp_storage_returns_to_baseline(load_result):
    t = load_result["temp_files"]
    assert t["n_leftovers"] == 0, t["leftovers"]
    # what remains are only Gradio's own empty upload temp files, at most one per uploaded file
    assert t["after_sessions"] - t["baseline"] == t["gradio_empty_tmp"] <= t["uploads"]


def test_no_empty_gradio_temp_files_left(load_result):
    """Gradio 6.31's gr.File(type='filepath').preprocess leaves one 0-byte NamedTemporaryFile per uploaded
    file in its upload folder (gradio/components/file.py); the app removes them."""
    assert load_result["temp_files"]["uploads"] > 0
    assert load_result["temp_files"]["gradio_empty_tmp"] == 0
