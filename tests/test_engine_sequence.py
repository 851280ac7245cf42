"""Engine with a memory model (SAM 2 video path) - PLUMBING ONLY, on a randomly initialised tiny SAM 2.1.

The model's weights are random, so masks are meaningless; these tests check the engine's wiring:
every slice of every volume comes out once, in range, with the right shapes, and the dataset
"seed frame" scheme yields only the volume's own frames.
"""

from __future__ import annotations

import numpy as np
import pytest

from promptonce.engine import Engine, segment
from promptonce.types import Box, Dataset, ObjectPrompt, SlicePrompt, Volume

pytest.importorskip("sam2")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_sam2():
    from promptonce.backends import sam2 as sam2_mod

    torch.set_num_threads(1)
    return sam2_mod.Sam2Backend(sam2_mod.tiny_random_model(128, seed=0), name="sam2.1_hiera_t", device="cpu")


def vol(n, h, w, name):
    rng = np.random.default_rng(n)
    return Volume(rng.normal(100, 20, (n, h, w)).astype(np.float32), name=name)


def test_plumbing_volume_scope_covers_every_slice_once(tiny_sam2):
    v = vol(6, 40, 48, "a")
    prompt = SlicePrompt((ObjectPrompt(box=Box(10, 10, 30, 30)),), slice_index=2)
    eng = Engine(tiny_sam2)
    assert eng.is_sequence
    out = list(segment(v, prompt, scope="volume", engine=eng))
    assert sorted(r.slice_index for r in out) == list(range(6))
    assert all(r.labels.shape == (40, 48) and r.labels.dtype == np.uint8 for r in out)


@pytest.mark.parametrize("strategy", ["transfer", "chain"])
def test_plumbing_dataset_seed_frame_scheme(tiny_sam2, strategy):
    ds = Dataset([vol(4, 40, 48, "a"), vol(3, 36, 40, "b"), vol(5, 40, 48, "c")])
    prompt = SlicePrompt((ObjectPrompt(box=Box(10, 10, 30, 30)),), slice_index=1, volume_index=1)
    out = list(segment(ds, prompt, scope="dataset", engine=Engine(tiny_sam2), strategy=strategy))
    got = sorted((r.volume_index, r.slice_index) for r in out)
    want = sorted((i, k) for i, n in enumerate([4, 3, 5]) for k in range(n))
    assert got == want  # every frame once; the prepended seed frame never appears
    for r in out:
        assert r.labels.shape == ds[r.volume_index].shape[1:]


def test_plumbing_exemplar_pass_reseeds_a_weak_volume_from_a_confident_one(tiny_sam2, monkeypatch):
    from promptonce.engine import transfer

    confidences = iter([0.95, 0.30, 0.90])  # volume 0 confident, volume 2 weak, its second run better
    monkeypatch.setattr(transfer, "case_confidence", lambda values: (list(values), next(confidences))[1])
    calls = []
    real = tiny_sam2.propagate_with_seed_frame

    def spy(frame, seeds, n, get_frame, **kw):
        calls.append((frame.shape, [s if isinstance(s, tuple) else "prompt" for s in seeds]))
        return real(frame, seeds, n, get_frame, **kw)

    monkeypatch.setattr(tiny_sam2, "propagate_with_seed_frame", spy)
    ds = Dataset([vol(4, 40, 48, "a"), vol(3, 36, 40, "b"), vol(5, 44, 52, "c")])
    prompt = SlicePrompt((ObjectPrompt(box=Box(10, 10, 30, 30)),), slice_index=1, volume_index=1)
    out = list(segment(ds, prompt, scope="dataset", engine=Engine(tiny_sam2)))
    got = sorted((r.volume_index, r.slice_index) for r in out)
    assert got == sorted((i, k) for i, n in enumerate([4, 3, 5]) for k in range(n))
    assert [r.volume_index for r in out][-5:] == [2] * 5  # the weak volume comes out last
    if len(calls) == 3:  # volume 0's key slice had a mask to seed with (random weights may give none)
        assert calls[2][0][:2] == (40, 48) and calls[2][1][0][0] == 1
    else:
        assert len(calls) == 2
