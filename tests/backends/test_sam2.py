"""SAM 2 backend PLUMBING tests on CPU with a RANDOMLY INITIALISED TINY SAM 2.1 (128 px input).

They check shapes, frame ordering, both directions, the seed-frame scheme, correction ranges, that our
constant-memory propagation gives exactly the stock ``propagate_in_video`` results, and that the state
stays bounded as frames grow. They say nothing about segmentation quality: the weights are random.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")
pytest.importorskip("hydra")

from promptonce.backends import sam2 as sam2_mod  # noqa: E402
from promptonce.backends.base import Backend, SequenceBackend  # noqa: E402
from promptonce.errors import PromptError, WeightsError  # noqa: E402
from promptonce.types import Box, ObjectPrompt, Point  # noqa: E402

H, W = 90, 120


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models on a shared 2-core machine run ~10x faster on one thread than on two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def backend(one_thread) -> sam2_mod.Sam2Backend:
    return sam2_mod.Sam2Backend(sam2_mod.tiny_random_model(128, seed=0), name="sam2.1_hiera_t", device="cpu")


def moving_frame(i: int, h: int = H, w: int = W) -> np.ndarray:
    """A bright square drifting right by one pixel per frame on a textured background."""
    yy, xx = np.mgrid[0:h, 0:w]
    f = ((xx * 3 + yy * 5) % 40).astype(np.uint8)
    f = np.repeat(f[:, :, None], 3, axis=2)
    f[h // 4: h // 4 + h // 3, w // 6 + i: w // 6 + i + w // 3] = 220
    return f


SEEDS = [ObjectPrompt(box=Box(20, 22, 60, 52), object_id=1),
         ObjectPrompt(points=(Point(90, 70, 1), Point(30, 35, 0)), object_id=3)]


def _stock_run(model, n: int, seed_frame: int, prompts, reverse: bool):
    """Stock SAM2VideoPredictor over the same preprocessed frames (all held in memory, as stock does)."""
    import sam2.sam2_video_predictor as svp

    frames = sam2_mod._LazyFrames(n, moving_frame, model.image_size, "cpu")
    images = torch.stack([frames[i].clone() for i in range(n)])
    orig = svp.load_video_frames
    svp.load_video_frames = lambda **kw: (images, H, W)
    try:
        state = model.init_state("unused")
    finally:
        svp.load_video_frames = orig
    for p in prompts:
        pts, lbl = p.point_arrays()
        model.add_new_points_or_box(state, seed_frame, p.object_id, points=pts if len(pts) else None,
                                    labels=lbl if len(lbl) else None,
                                    box=None if p.box is None else p.box.as_array())
    out = {}
    for t, ids, masks in model.propagate_in_video(state, start_frame_idx=seed_frame, reverse=reverse):
        out[t] = {oid: (masks[i, 0] > 0).numpy() for i, oid in enumerate(ids)}
    stored = sum(len(od["non_cond_frame_outputs"]) for od in state["output_dict_per_obj"].values())
    return out, stored


def test_plumbing_protocols(backend: sam2_mod.Sam2Backend) -> None:
    assert isinstance(backend, Backend) and isinstance(backend, SequenceBackend)
    assert backend.info.sequence and backend.info.input_size == 128


def test_plumbing_image_path(backend: sam2_mod.Sam2Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    emb = backend.embed(moving_frame(0))
    assert emb.frame_size == (H, W)
    assert tuple(emb.data["image_embed"].shape) == (1, 256, 8, 8)
    calls = []
    orig = backend.model.image_encoder.forward
    monkeypatch.setattr(backend.model.image_encoder, "forward", lambda *a, **k: calls.append(1) or orig(*a, **k))
    pred = backend.predict(emb, points=np.array([[40, 30]]), point_labels=np.array([1]), multimask=True)
    assert calls == []  # decoded from the stored features
    assert pred.masks.shape == (3, H, W) and pred.masks.dtype == bool
    assert np.all(np.diff(pred.scores) <= 0)
    assert pred.logits.shape == (3, 32, 32)
    again = backend.predict(emb, box=np.array([20, 22, 60, 52]), mask_logits=pred.logits[:1])
    assert again.masks.shape == (1, H, W)
    with pytest.raises(PromptError):
        backend.predict(emb)


@pytest.mark.parametrize("reverse", [False, True])
def test_plumbing_matches_stock_propagate_in_video(backend: sam2_mod.Sam2Backend, reverse: bool) -> None:
    """Same frames, same prompts: our pruned, lazily loaded state gives exactly the stock masks."""
    n = 26  # longer than the memory bank (7) and the object-pointer window (16)
    seed = n - 2 if reverse else 1
    stock, stock_stored = _stock_run(backend.model, n, seed, SEEDS, reverse)
    ours = {t: masks for t, masks, _ in backend.propagate(n, moving_frame, {seed: SEEDS}, start=seed,
                                                             reverse=reverse)}
    assert list(ours) == list(stock)
    for t in stock:
        for oid in (1, 3):
            assert np.array_equal(ours[t][oid], stock[t][oid]), f"frame {t}, object {oid}"
    # Stock keeps every frame's outputs; ours at most the memory bank + pointer window per object.
    assert stock_stored == 2 * (n - 2)
    stats = backend.last_stats
    assert stats["full_memories"] <= 2 * (backend.model.num_maskmem - 1)
    assert stats["full_memories"] + stats["pointer_only"] <= 2 * (backend.model.max_obj_ptrs_in_encoder - 1)


def test_plumbing_memory_stays_flat_as_frames_grow(backend: sam2_mod.Sam2Backend) -> None:
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process(os.getpid())
    seeds = {0: SEEDS[:1]}

    def big_frame(i: int) -> np.ndarray:  # 3 MB per frame: holding them would show in RSS at once
        return np.full((1024, 1024, 3), (i * 7) % 255, np.uint8)

    peaks = {}
    rss = {}
    for n in (20, 80):
        peak = 0
        for t, masks, scores in backend.propagate(n, big_frame, seeds, start=0):
            assert masks[1].shape == (1024, 1024) and 0.0 <= scores[1] <= 1.0
            s = backend.last_stats
            peak = max(peak, s["full_memories"] + s["pointer_only"] + s["cached_features"] + s["cached_frames"])
            assert s["cached_frames"] <= 2 and s["cached_features"] <= 1
            if n == 80 and t in (20, 79):
                rss[t] = proc.memory_info().rss
        assert backend.last_stats["frames_loaded"] == n  # every frame loaded once, none twice
        peaks[n] = peak
    assert peaks[20] == peaks[80]  # the state is bounded by a constant, not by the length
    # 60 more frames of 3 MB input (and 1 MB output masks) must not accumulate.
    assert rss[79] - rss[20] < 40 * 2**20, (rss[79] - rss[20]) / 2**20


def test_plumbing_directions_order_and_end(backend: sam2_mod.Sam2Backend) -> None:
    n = 12
    seeds = {5: SEEDS}
    fwd = list(backend.propagate(n, moving_frame, seeds, start=5))
    assert [t for t, _, _ in fwd] == list(range(5, 12))
    bwd = list(backend.propagate(n, moving_frame, seeds, start=5, reverse=True))
    assert [t for t, _, _ in bwd] == [5, 4, 3, 2, 1, 0]
    part = list(backend.propagate(n, moving_frame, seeds, start=5, end=8))
    assert [t for t, _, _ in part] == [5, 6, 7, 8]
    for _, masks, scores in fwd + bwd:
        assert set(masks) == {1, 3} and set(scores) == {1, 3}
        assert all(m.shape == (H, W) and m.dtype == bool for m in masks.values())
    # The seeded frame's output is the prompt's own (the same whichever direction follows).
    assert all(np.array_equal(fwd[0][1][k], bwd[0][1][k]) for k in (1, 3))
    # Restarting gives identical results: each call starts from a fresh state.
    again = list(backend.propagate(n, moving_frame, seeds, start=5, end=8))
    assert all(np.array_equal(a[1][1], b[1][1]) for a, b in zip(part, again))


def test_plumbing_seed_frame_dropped_and_indices_shifted(backend: sam2_mod.Sam2Backend) -> None:
    seed_frame = moving_frame(3, 70, 100)  # another volume: another size
    prompts = [ObjectPrompt(box=Box(15, 18, 50, 40), object_id=2)]
    asked: list[int] = []

    def vol(i: int) -> np.ndarray:
        asked.append(i)
        return moving_frame(i)

    out = list(backend.propagate_with_seed_frame(seed_frame, prompts, 6, vol))
    assert [t for t, _, _ in out] == [0, 1, 2, 3, 4, 5]
    assert sorted(set(asked)) == [0, 1, 2, 3, 4, 5]
    assert all(m[2].shape == (H, W) for _, m, _ in out)
    # Same as propagating over the explicit concatenation [seed, vol 0..5] and dropping frame 0.
    concat = list(backend.propagate(7, lambda i: seed_frame if i == 0 else moving_frame(i - 1),
                                    {0: prompts}, start=0))
    assert concat[0][1][2].shape == (70, 100)
    for (t, m, s), (tc, mc, sc) in zip(out, concat[1:]):
        assert t == tc - 1 and np.array_equal(m[2], mc[2]) and s == sc
    part = list(backend.propagate_with_seed_frame(seed_frame, prompts, 6, vol, end=2))
    assert [t for t, _, _ in part] == [0, 1, 2]


def test_plumbing_mask_seeds(backend: sam2_mod.Sam2Backend) -> None:
    mask = np.zeros((H, W), bool)
    mask[20:70, 30:100] = True
    out = list(backend.propagate(4, moving_frame, {2: [(4, mask)]}, start=2, reverse=True))
    assert [t for t, _, _ in out] == [2, 1, 0]
    got = out[0][1][4]
    iou = (got & mask).sum() / (got | mask).sum()
    assert iou > 0.9  # the seeded frame returns the given mask (through 1/4-resolution logits)
    with pytest.raises(PromptError, match="slice is"):
        list(backend.propagate(4, moving_frame, {2: [(4, mask[:10])]}, start=2))


def test_plumbing_correction_reruns_only_the_affected_range(backend: sam2_mod.Sam2Backend) -> None:
    n = 15
    seeds = {2: SEEDS, 10: SEEDS}
    seeds_new = {**seeds, 6: [ObjectPrompt(points=(Point(45, 40),), object_id=1),
                              ObjectPrompt(points=(Point(90, 70),), object_id=3)]}
    asked: list[int] = []

    def frame(i: int) -> np.ndarray:
        asked.append(i)
        return moving_frame(i)

    from promptonce.annotation import correction_range

    lo, hi = correction_range(6, list(seeds), n)  # the package's one correction-range rule
    done = [t for t, _, _ in backend.propagate(n, frame, seeds_new, start=6, end=hi)]
    done += [t for t, _, _ in backend.propagate(n, frame, seeds_new, start=6, reverse=True, end=lo)]
    assert sorted(done) == [3, 4, 5, 6, 6, 7, 8, 9]
    assert set(asked) <= {2, 3, 4, 5, 6, 7, 8, 9, 10}  # the prompted slices plus the range, nothing else


def test_plumbing_input_errors(backend: sam2_mod.Sam2Backend) -> None:
    with pytest.raises(PromptError, match="at least one prompt"):
        backend.propagate(5, moving_frame, {}, start=0)
    with pytest.raises(PromptError, match="must be slices"):
        backend.propagate(5, moving_frame, {0: SEEDS}, start=5)
    with pytest.raises(PromptError, match="behind"):
        backend.propagate(5, moving_frame, {0: SEEDS}, start=3, end=1)
    with pytest.raises(PromptError, match="sequence has 5"):
        list(backend.propagate(5, moving_frame, {7: SEEDS}, start=0))
    with pytest.raises(PromptError, match="outside"):
        list(backend.propagate(5, moving_frame, {0: [ObjectPrompt(points=(Point(500, 5),))]}, start=0))


def test_register_all_lists_eight_models() -> None:
    got = []
    sam2_mod.register_all(lambda name, builder, info, check: got.append((name, info)))
    assert len(got) == 8 and {g[0] for g in got} == set(sam2_mod.SAM2_MODELS)
    assert all(info.sequence and info.points and info.boxes for _, info in got)


def test_plumbing_custom_config_and_checkpoint(tmp_path: Path, backend: sam2_mod.Sam2Backend) -> None:
    """A custom .yaml + checkpoint pair (the MedSAM2 route) loads strictly; a misfit is refused."""
    import shutil

    import sam2

    cfg = tmp_path / "custom_t.yaml"
    shutil.copy(Path(sam2.__file__).parent / "configs/sam2.1/sam2.1_hiera_t.yaml", cfg)
    ckpt = tmp_path / "custom.pt"
    torch.save({"model": backend.model.state_dict()}, ckpt)
    tiny = {
        "model.image_size": 128, "model.image_encoder.trunk.embed_dim": 32,
        "model.image_encoder.trunk.stages": [1, 1, 2, 1], "model.image_encoder.trunk.global_att_blocks": [3],
        "model.image_encoder.neck.backbone_channel_list": [256, 128, 64, 32],
        "model.memory_attention.num_layers": 1, "model.memory_attention.layer.dim_feedforward": 256,
        "model.memory_encoder.fuser.num_layers": 1,
    }
    model = sam2_mod.build_sam2_model(cfg, ckpt, overrides=tiny, seed=123)
    for (k, a), b in zip(model.state_dict().items(), backend.model.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(WeightsError, match="does not fit"):
        sam2_mod.build_sam2_model(cfg, ckpt, overrides={**tiny, "model.memory_attention.num_layers": 2})


@pytest.mark.gpu
def test_gpu_plumbing_bf16_peak_memory_flat() -> None:
    """On CUDA (bf16 autocast): peak GPU memory of a propagation does not grow from 20 to 120 frames."""
    b = sam2_mod.Sam2Backend(sam2_mod.tiny_random_model(128, seed=0, device="cuda"), device="cuda")
    emb = b.embed(moving_frame(0))
    assert b.predict(emb, box=np.array([20, 22, 60, 52])).masks.shape == (1, H, W)
    list(b.propagate(8, moving_frame, {0: SEEDS}, start=0))  # warm-up
    peaks = {}
    for n in (20, 120):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = [t for t, m, _ in b.propagate(n, moving_frame, {0: SEEDS}, start=0)]
        assert out == list(range(n))
        torch.cuda.synchronize()
        peaks[n] = torch.cuda.max_memory_allocated() - base
    assert peaks[120] <= peaks[20] + 2**20, peaks
