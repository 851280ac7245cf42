"""The CPU backends (fake, LiteMedSAM, MobileSAM) and the registry.

LiteMedSAM and MobileSAM run with the real weights shipped in their packages, on one small non-square
synthetic frame (128 x 160) holding a bright disc near the top-left and a bright square near the
bottom-right, so that a wrong resize/pad/box transform puts the mask in the wrong place.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from promptonce.backends import _torchutil as tu
from promptonce.backends.weights import sha256_file
from promptonce.backends import registry
from promptonce.backends.base import Backend, Embedding
from promptonce.backends.fake import FakeBackend
from promptonce.backends.litemedsam import preprocess_frame, resize_longest_side, scale_box
from promptonce.errors import InputError, ModelUnavailableError, PromptError, WeightsError

H, W = 128, 160
DISC = (40, 45, 18)  # centre row, centre col, radius
SQUARE = (80, 112, 110, 146)  # rows y0..y1, cols x0..x1 (inclusive)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:H, :W]
    disc = (yy - DISC[0]) ** 2 + (xx - DISC[1]) ** 2 <= DISC[2] ** 2
    square = np.zeros((H, W), bool)
    square[SQUARE[0] : SQUARE[1] + 1, SQUARE[2] : SQUARE[3] + 1] = True
    rng = np.random.default_rng(7)
    grey = rng.normal(35, 4, (H, W)) + 170 * disc + 150 * square
    frame = np.repeat(grey.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
    return frame, disc, square


FRAME, DISC_MASK, SQUARE_MASK = _scene()
DISC_BOX = np.array([DISC[1] - DISC[2] - 3, DISC[0] - DISC[2] - 3, DISC[1] + DISC[2] + 3, DISC[0] + DISC[2] + 3], np.float32)
SQUARE_BOX = np.array([SQUARE[2] - 3, SQUARE[0] - 3, SQUARE[3] + 3, SQUARE[1] + 3], np.float32)


# ---------------------------------------------------------------------- fake backend
def test_fake_imports_without_torch() -> None:
    code = (
        "import sys, numpy as np; from promptonce.backends.fake import FakeBackend; "
        "b = FakeBackend(); e = b.embed(np.zeros((8, 8, 3), np.uint8)); "
        "b.predict(e, box=np.array([1, 1, 5, 5])); "
        "from promptonce.backends import registry; registry.available_backends(); registry.get_backend('fake'); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_fake_box_and_point_segment_the_object_and_are_deterministic() -> None:
    be = FakeBackend()
    emb = be.embed(FRAME)
    assert emb.frame_size == (H, W) and emb.backend == "fake"
    p1 = be.predict(emb, box=DISC_BOX)
    p2 = be.predict(emb, box=DISC_BOX)
    assert p1.masks.shape == (1, H, W) and p1.masks.dtype == bool and p1.scores.shape == (1,)
    np.testing.assert_array_equal(p1.masks, p2.masks)
    assert dice(p1.masks[0], DISC_MASK) > 0.95
    click = be.predict(emb, points=np.array([[SQUARE[2] + 10, SQUARE[0] + 10]]), point_labels=np.array([1]))
    assert dice(click.masks[0], SQUARE_MASK) > 0.95
    assert not (click.masks[0] & DISC_MASK).any()


def test_fake_multimask_best_first_and_negative_click() -> None:
    be = FakeBackend()
    emb = be.embed(FRAME)
    pred = be.predict(emb, points=np.array([[DISC[1], DISC[0]]]), point_labels=np.array([1]), multimask=True)
    assert pred.masks.shape == (3, H, W)
    assert list(pred.scores) == sorted(pred.scores, reverse=True)
    np.testing.assert_array_equal(pred.best, pred.masks[0])
    # a box over both objects with a negative click on the square keeps only the disc
    both = np.array([0, 0, W - 1, H - 1], np.float32)
    pts = np.array([[DISC[1], DISC[0]], [SQUARE[2] + 10, SQUARE[0] + 10]], np.float32)
    pred = be.predict(emb, points=pts, point_labels=np.array([1, 0]), box=both)
    assert dice(pred.masks[0], DISC_MASK) > 0.95


def test_fake_rejects_empty_prompt_and_foreign_embedding() -> None:
    be = FakeBackend()
    emb = be.embed(FRAME)
    with pytest.raises(PromptError):
        be.predict(emb)
    with pytest.raises(PromptError):
        be.predict(emb, points=np.array([[3, 3]]), point_labels=np.array([0]))
    with pytest.raises(InputError, match="embed the frame again"):
        be.predict(Embedding(data=None, frame_size=(H, W), backend="litemedsam"), box=DISC_BOX)
    with pytest.raises(PromptError, match="outside"):
        be.predict(emb, box=np.array([500, 500, 600, 600]))
    with pytest.raises(InputError, match="uint8"):
        be.embed(FRAME.astype(np.float32))


# ---------------------------------------------------------------------- LiteMedSAM geometry (no model)
def test_resize_longest_side_sizes_and_2x_average() -> None:
    assert tu.resized_shape(128, 160, 256) == (205, 256)
    assert tu.resized_shape(512, 512, 256) == (256, 256)
    assert tu.resized_shape(300, 700, 256) == (110, 256)
    assert tu.resized_shape(60, 100, 1024) == (614, 1024)  # SAM's rule: 614.4 -> 614
    img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5
    big = np.kron(np.arange(256 * 256).reshape(256, 256) % 251, np.ones((2, 2))).astype(np.uint8)
    out = resize_longest_side(np.repeat(big[..., None], 3, 2))
    np.testing.assert_array_equal(out[..., 0], np.arange(256 * 256).reshape(256, 256) % 251)
    # 2x2 block mean rounds half up, as OpenCV's INTER_AREA fast path does
    blocks = np.zeros((512, 512, 1), np.uint8)
    blocks[0, 0], blocks[0, 1] = 1, 2  # block (0, 0) sums to 3 -> 3/4 = 0.75 -> 1
    blocks[2, 2] = 2  # block (1, 1) sums to 2 -> 0.5 -> 1 (half up)
    small = resize_longest_side(blocks)
    assert small[0, 0, 0] == 1 and small[1, 1, 0] == 1 and small[2, 2, 0] == 0
    assert resize_longest_side(img).shape == (256, 256, 3)


def test_resize_enlarging_keeps_constant_and_edges() -> None:
    img = np.full((35, 50, 3), 77, np.uint8)
    out = resize_longest_side(img)
    assert out.shape == (179, 256, 3) and np.all(out == 77)
    step = np.zeros((35, 50, 3), np.uint8)
    step[:, 25:] = 200
    out = resize_longest_side(step)[..., 0]
    # the edge lands at 25 * 256 / 50 = 128; INTER_AREA enlarging is nearest with a one-pixel blend
    assert np.all(out[:, :127] == 0) and np.all(out[:, 129:] == 200)


def test_preprocess_normalises_and_pads() -> None:
    x, (nh, nw) = preprocess_frame(FRAME)
    assert x.shape == (3, 256, 256) and x.dtype == np.float32
    assert (nh, nw) == (205, 256)
    assert x[:, :nh, :nw].min() == 0.0 and x[:, :nh, :nw].max() == 1.0
    assert np.all(x[:, nh:, :] == 0)


def test_scale_box_truncates_like_the_official_script() -> None:
    np.testing.assert_array_equal(scale_box(np.array([10, 20, 100, 127]), (128, 160)), [16, 32, 160, 203])


# ---------------------------------------------------------------------- checkpoint helpers
def test_strict_loading_refuses_missing_keys(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    state = net.state_dict()
    del state["1.bias"]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="does not match"):
        tu.load_checkpoint_strict(net, tmp_path / "bad.pt")
    torch.save({"model": net.state_dict()}, tmp_path / "good.pt")
    tu.load_checkpoint_strict(net, tmp_path / "good.pt")


def test_verify_checkpoint_size_and_checksum(tmp_path: Path) -> None:
    from promptonce.backends.weights import CheckpointSpec, verify_checkpoint

    p = tmp_path / "w.bin"
    p.write_bytes(b"abc")
    sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    fix = "Reinstall the package that ships it."
    assert verify_checkpoint(p, CheckpointSpec("w", "w.bin", "", sha, 3, fix)) == sha
    with pytest.raises(WeightsError, match="bytes.*Reinstall"):
        verify_checkpoint(p, CheckpointSpec("w", "w.bin", "", sha, 4, fix))
    with pytest.raises(WeightsError, match="sha256.*Reinstall"):
        verify_checkpoint(p, CheckpointSpec("w", "w.bin", "", "0" * 64, 3, fix))
    with pytest.raises(WeightsError, match="missing"):
        verify_checkpoint(tmp_path / "nope.bin", CheckpointSpec("w", "nope.bin", "", sha, 3, fix))


# ---------------------------------------------------------------------- LiteMedSAM (real weights)
@pytest.fixture(scope="module")
def lite() -> Backend:
    pytest.importorskip("torch")
    return registry.get_backend("litemedsam", device="cpu", runtime="torch")


@pytest.fixture(scope="module")
def lite_emb(lite) -> Embedding:
    return lite.embed(FRAME)


def test_litemedsam_box_segments_disc_and_offset_square(lite, lite_emb) -> None:
    calls = lite.encoder_calls
    disc = lite.predict(lite_emb, box=DISC_BOX)
    square = lite.predict(lite_emb, box=SQUARE_BOX)
    assert lite.encoder_calls == calls  # decoding reuses the embedding
    assert disc.masks.shape == (1, H, W) and disc.masks.dtype == bool
    assert disc.logits is not None and disc.logits.shape == (1, 256, 256)
    assert 0.0 <= float(disc.scores[0]) <= 1.0
    assert dice(disc.masks[0], DISC_MASK) > 0.85
    assert dice(square.masks[0], SQUARE_MASK) > 0.85
    assert not (square.masks[0] & DISC_MASK).any()


def test_litemedsam_refuses_points_and_missing_box(lite, lite_emb) -> None:
    with pytest.raises(PromptError, match="LiteMedSAM takes boxes"):
        lite.predict(lite_emb, points=np.array([[45, 40]]), point_labels=np.array([1]), box=DISC_BOX)
    with pytest.raises(PromptError, match="needs a box"):
        lite.predict(lite_emb)


def test_litemedsam_embed_many_batches(lite, lite_emb) -> None:
    calls = lite.encoder_calls
    flipped = np.ascontiguousarray(FRAME[::-1])
    embs = lite.embed_many([FRAME, flipped])
    assert lite.encoder_calls == calls + 1  # one batch of two
    assert [e.frame_size for e in embs] == [(H, W), (H, W)]
    np.testing.assert_allclose(embs[0].data.numpy(), lite_emb.data.numpy(), atol=2e-3)
    m = lite.predict(embs[1], box=np.array([DISC_BOX[0], H - 1 - DISC_BOX[3], DISC_BOX[2], H - 1 - DISC_BOX[1]]))
    assert dice(m.masks[0], DISC_MASK[::-1]) > 0.85


# ---------------------------------------------------------------------- MobileSAM (real weights)
@pytest.fixture(scope="module")
def mobile() -> Backend:
    pytest.importorskip("torch")
    return registry.get_backend("mobilesam", device="cpu", runtime="torch")


@pytest.fixture(scope="module")
def mobile_emb(mobile) -> Embedding:
    return mobile.embed(FRAME)


def test_mobilesam_click_box_and_mask_prompt(mobile, mobile_emb) -> None:
    calls = mobile.encoder_calls
    click = mobile.predict(
        mobile_emb, points=np.array([[DISC[1], DISC[0]]]), point_labels=np.array([1]), multimask=True
    )
    assert click.masks.shape == (3, H, W) and click.scores.shape == (3,)
    assert list(click.scores) == sorted(click.scores, reverse=True)
    assert click.logits is not None and click.logits.shape == (3, 256, 256)
    assert dice(click.best, DISC_MASK) > 0.85
    square = mobile.predict(mobile_emb, box=SQUARE_BOX)
    assert square.masks.shape == (1, H, W)
    assert dice(square.masks[0], SQUARE_MASK) > 0.85
    refined = mobile.predict(
        mobile_emb,
        points=np.array([[DISC[1], DISC[0]]]),
        point_labels=np.array([1]),
        mask_logits=click.logits[:1],
    )
    assert dice(refined.masks[0], DISC_MASK) > 0.85
    assert mobile.encoder_calls == calls  # three decodes, no encoder call
    with pytest.raises(PromptError):
        mobile.predict(mobile_emb)


# ---------------------------------------------------------------------- registry
def test_registry_lists_cpu_backends_as_available() -> None:
    rows = {info.name: (ok, why) for info, ok, why in registry.available_backends()}
    for name in ("fake", "litemedsam", "mobilesam"):
        assert rows[name] == (True, ""), rows[name]
    for info, ok, why in registry.available_backends():
        assert ok or why, f"{info.name} is unavailable without a reason"


def test_registry_unknown_name_lists_known_names() -> None:
    with pytest.raises(InputError) as err:
        registry.get_backend("no-such-model")
    for name in ("litemedsam", "mobilesam", "fake"):
        assert name in str(err.value)


def test_registry_caches_one_instance_per_settings() -> None:
    a = registry.get_backend("fake", tolerance=11.0)
    assert registry.get_backend("fake", tolerance=11.0) is a
    assert registry.get_backend("fake", tolerance=12.0) is not a
    got: list[Backend] = []
    threads = [threading.Thread(target=lambda: got.append(registry.get_backend("fake", tolerance=13.0))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(b) for b in got}) == 1


def test_registry_auto_and_aliases(lite) -> None:
    assert registry.get_backend("auto", device="cpu", runtime="torch") is lite
    assert registry.get_backend("LITE_MEDSAM", device="cpu", runtime="torch") is lite


def test_registry_register_adds_a_backend() -> None:
    from promptonce.backends.base import BackendInfo

    info = BackendInfo(name="test_dummy", title="Dummy", points=True, boxes=True, input_size=0)
    registry.register("test_dummy", lambda device=None, **kw: FakeBackend(**kw), info, lambda: "needs a unicorn", uses_device=False)
    rows = {i.name: (ok, why) for i, ok, why in registry.available_backends()}
    assert rows["test_dummy"] == (False, "needs a unicorn")
    with pytest.raises(ModelUnavailableError, match="unicorn"):
        registry.get_backend("test_dummy")


# ---------------------------------------------------------------------- real data
@pytest.mark.realdata
@pytest.mark.slow
def test_litemedsam_on_shenzhen_xrays(shared_data: Path, lite) -> None:
    from PIL import Image
    from scipy import ndimage

    paths = sorted((shared_data / "cxr_shenzhen" / "images").glob("*.png"))[:3]
    assert len(paths) == 3
    scores = []
    frames, refs, boxes = [], [], []
    for p in paths:
        grey = np.array(Image.open(p).convert("L"))
        ref = np.array(Image.open(shared_data / "cxr_shenzhen" / "masks" / p.name).convert("L")) > 127
        lab, n = ndimage.label(ref)
        sizes = ndimage.sum(ref, lab, range(1, n + 1))
        objs = ndimage.find_objects(lab)
        # one box per lung: the two largest components
        keep = np.argsort(sizes)[::-1][:2]
        boxes.append([np.array([objs[i][1].start, objs[i][0].start, objs[i][1].stop - 1, objs[i][0].stop - 1]) for i in keep])
        frames.append(np.repeat(grey[..., None], 3, axis=2))
        refs.append(ref)
    preds = []
    for emb, ref, bxs in zip(lite.embed_many(frames), refs, boxes):
        pred = np.zeros_like(ref)
        for b in bxs:
            pred |= lite.predict(emb, box=b).masks[0]
        scores.append(dice(pred, ref))
        preds.append(pred)
    assert np.mean(scores) > 0.85, scores
    # the default runtime (ONNX Runtime when installed) must give the PyTorch fp32 masks
    default = registry.get_backend("litemedsam", device="cpu")
    for emb, pred, bxs in zip(default.embed_many(frames), preds, boxes):
        other = np.zeros_like(pred)
        for b in bxs:
            other |= default.predict(emb, box=b).masks[0]
        assert dice(other, pred) >= 0.995, default.runtime


# ---------------------------------------------------------------------- ONNX Runtime encoder path
def test_onnx_session_falls_back_when_missing_or_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from promptonce.backends import _onnx

    monkeypatch.setenv("PROMPTONCE_CACHE", str(tmp_path))
    monkeypatch.setattr(_onnx, "onnx_available", lambda export=False: False)
    assert _onnx.encoder_session(object(), "x_encoder", "ab" * 32, 256) is None
    monkeypatch.undo()
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("PROMPTONCE_CACHE", str(tmp_path))
    bad = _onnx.cache_path("x_encoder", "ab" * 32, 256)
    sidecar = bad.with_name(bad.name + ".sha256")
    # a recorded but undecodable file: removed, PyTorch is used
    bad.write_bytes(b"not an onnx file")
    sidecar.write_text(sha256_file(bad))
    assert _onnx.encoder_session(object(), "x_encoder", "ab" * 32, 256) is None
    assert not bad.exists() and not sidecar.exists()
    # a file whose checksum was never recorded is exported again (here the export fails: no module)
    bad.write_bytes(b"not an onnx file either")
    assert _onnx.encoder_session(object(), "x_encoder", "ab" * 32, 256) is None
    assert not bad.exists()


@pytest.mark.slow
def test_litemedsam_onnx_runtime_gives_the_torch_masks(
    lite, lite_emb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from promptonce.backends import litemedsam
    from promptonce.backends.litemedsam import LiteMedSAMBackend

    monkeypatch.setenv("PROMPTONCE_CACHE", str(tmp_path))
    be = LiteMedSAMBackend(device="cpu", runtime="onnx")
    assert be.runtime == "onnx"
    from promptonce.backends import _decoder_split

    split = _decoder_split.split_paths("litemedsam", litemedsam.CHECKPOINT_SHA256, litemedsam.INPUT_SIZE)
    for path in (*litemedsam.onnx_paths(), *split):  # every graph exported (by the child), verified, recorded
        assert path.is_file() and not list(path.parent.glob(".*.tmp"))
        assert path.with_name(path.name + ".sha256").read_text().strip() == sha256_file(path)
    assert isinstance(be._onnx_decoder, _decoder_split.SplitDecoder)
    emb = be.embed(FRAME)
    assert isinstance(emb.data, np.ndarray) and emb.data.shape == (1, 256, 64, 64)
    np.testing.assert_allclose(emb.data, lite_emb.data.numpy(), atol=1e-3)
    for box in (DISC_BOX, SQUARE_BOX, np.array([3.0, 5.0, 70.0, 60.0])):
        got, want = be.predict(emb, box=box), lite.predict(lite_emb, box=box)
        assert dice(got.masks[0], want.masks[0]) >= 0.999
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-3)
        np.testing.assert_allclose(got.logits, want.logits, atol=1e-2)
        # a torch embedding given to the ONNX decoder is accepted too
        assert dice(be.predict(lite_emb, box=box).masks[0], want.masks[0]) >= 0.999
    stamps = [p.stat().st_mtime_ns for p in litemedsam.onnx_paths()]
    again = LiteMedSAMBackend(device="cpu", runtime="auto")
    assert again.runtime == "onnx"
    assert [p.stat().st_mtime_ns for p in litemedsam.onnx_paths()] == stamps  # reused, not exported again
    # a process that finds the exports never imports torch (the ~0.5 GB that issue 7's RSS budget needs)
    code = (
        "import sys, numpy as np\n"
        "from promptonce.backends.registry import get_backend\n"
        "be = get_backend('litemedsam', device='cpu')\n"
        "f = np.zeros((64, 80, 3), np.uint8); f[20:40, 20:50] = 200\n"
        "m = be.predict(be.embed(f), box=np.array([18, 18, 52, 42])).masks[0]\n"
        "assert be.runtime == 'onnx', be.runtime\n"
        "assert m[30, 35] and not m[5, 5], m.sum()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_upsample_logits_matches_torch_interpolate() -> None:
    torch = pytest.importorskip("torch")
    from torch.nn import functional as F

    from promptonce.backends import _onnx

    rng = np.random.default_rng(3)
    low = rng.normal(0, 4, (3, 256, 256)).astype(np.float32)
    t = torch.from_numpy(low)[None]
    for content, out in (((256, 212), (122, 101)), ((180, 256), (360, 512)), ((256, 256), (1000, 999))):
        # LiteMedSAM: crop the low-res logits, resize to the frame
        want = F.interpolate(t[..., : content[0], : content[1]], size=out, mode="bilinear", align_corners=False)[0]
        np.testing.assert_allclose(_onnx.upsample_logits(low, content, out), want.numpy(), atol=2e-4)
    for content, out in (((1024, 853), (600, 500)), ((768, 1024), (384, 512)), ((1024, 1024), (64, 64))):
        # SAM: up to 1024, crop, resize to the frame (Sam.postprocess_masks)
        up = F.interpolate(t, size=(1024, 1024), mode="bilinear", align_corners=False)[..., : content[0], : content[1]]
        want = F.interpolate(up, size=out, mode="bilinear", align_corners=False)[0]
        np.testing.assert_allclose(_onnx.upsample_logits(low, content, out, padded=1024), want.numpy(), atol=2e-4)


def _blas_threads() -> int:
    from threadpoolctl import threadpool_info

    return min((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=0)


def test_upsampling_runs_on_one_blas_thread_and_gives_the_setting_back(monkeypatch: pytest.MonkeyPatch) -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from promptonce.backends import _onnx

    seen: list[int] = []
    stack = np.stack

    def spy(arrays, *a, **k):  # noqa: ANN001, ANN002, ANN003
        seen.append(_blas_threads())
        return stack(arrays, *a, **k)

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        if _blas_threads() != 2:
            pytest.skip("this BLAS does not take a second thread here")
        monkeypatch.setattr(np, "stack", spy)
        _onnx.upsample_logits(np.zeros((1, 64, 64), np.float32), (64, 64), (128, 128))
        monkeypatch.setattr(np, "stack", stack)
        assert seen == [1]
        assert _blas_threads() == 2
        # nested and concurrent users: the limit holds until the last one leaves
        entered, leave = threading.Event(), threading.Event()

        def other() -> None:
            with _onnx.one_blas_thread():
                entered.set()
                leave.wait(10)

        t = threading.Thread(target=other)
        with _onnx.one_blas_thread():
            t.start()
            assert entered.wait(10)
            with _onnx.one_blas_thread():
                assert _blas_threads() == 1
            assert _blas_threads() == 1
        assert _blas_threads() == 1  # the other thread is still inside
        leave.set()
        t.join(10)
        assert _blas_threads() == 2


def test_upsampling_without_threadpoolctl_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys as _sys

    from promptonce.backends import _onnx

    monkeypatch.setitem(_sys.modules, "threadpoolctl", None)  # import fails
    monkeypatch.setitem(_onnx._blas_state, "controller", None)
    low = np.random.default_rng(0).normal(size=(2, 32, 32)).astype(np.float32)
    out = _onnx.upsample_logits(low, (32, 32), (64, 48))
    assert out.shape == (2, 64, 48) and np.isfinite(out).all()
    assert _onnx._blas_state["users"] == 0 and _onnx._blas_state["limiter"] is None


def test_decoder_feeds_order_points_padding_and_box() -> None:
    from promptonce.backends import _onnx

    emb = np.zeros((1, 256, 64, 64), np.float32)
    f = _onnx.decoder_feeds(emb, np.array([[1, 2], [3, 4]]), np.array([1, 0]), None)
    np.testing.assert_array_equal(f["point_coords"][0], [[1, 2], [3, 4], [0, 0]])
    np.testing.assert_array_equal(f["point_labels"][0], [1, 0, -1])  # padding point when there is no box
    assert f["has_mask_input"][0] == 0
    f = _onnx.decoder_feeds(emb, np.array([[1, 2]]), np.array([1]), np.array([5, 6, 7, 8]), np.ones((1, 256, 256)))
    np.testing.assert_array_equal(f["point_coords"][0], [[1, 2], [5, 6], [7, 8]])
    np.testing.assert_array_equal(f["point_labels"][0], [1, 2, 3])
    assert f["has_mask_input"][0] == 1 and f["mask_input"].shape == (1, 1, 256, 256)
    f = _onnx.decoder_feeds(emb, None, None, np.array([5, 6, 7, 8]))
    np.testing.assert_array_equal(f["point_labels"][0], [2, 3])


@pytest.mark.slow
def test_mobilesam_default_runtime_gives_the_torch_masks(mobile, mobile_emb) -> None:
    default = registry.get_backend("mobilesam", device="cpu")  # ONNX Runtime when installed
    emb = default.embed(FRAME)
    click = {"points": np.array([[DISC[1], DISC[0]]]), "point_labels": np.array([1])}
    for kwargs in (
        {"box": SQUARE_BOX},
        {**click, "multimask": True},
        {"points": np.array([[DISC[1], DISC[0]], [5, 5]]), "point_labels": np.array([1, 0])},
        {**click, "box": DISC_BOX},
        {**click, "mask_logits": mobile.predict(mobile_emb, **click).logits[:1]},
    ):
        a = default.predict(emb, **kwargs)
        b = mobile.predict(mobile_emb, **kwargs)
        assert a.masks.shape == b.masks.shape, kwargs.keys()
        assert min(dice(x, y) for x, y in zip(a.masks, b.masks)) >= 0.995, (default.runtime, kwargs.keys())
        np.testing.assert_allclose(a.scores, b.scores, atol=2e-3)


@pytest.mark.slow
def test_litemedsam_bf16_runtime_is_close_to_fp32(lite, lite_emb) -> None:
    from promptonce.backends.litemedsam import LiteMedSAMBackend

    be = LiteMedSAMBackend(device="cpu", runtime="bf16")
    emb = be.embed(FRAME)
    for box in (DISC_BOX, SQUARE_BOX):
        assert dice(be.predict(emb, box=box).masks[0], lite.predict(lite_emb, box=box).masks[0]) >= 0.98


@pytest.mark.slow
def test_openvino_encoder_when_installed_matches_onnx_runtime_alone_and_two_at_once(lite, lite_emb) -> None:
    pytest.importorskip("openvino", reason="OpenVINO is optional (not in requirements.txt)")
    pytest.importorskip("onnxruntime")
    from promptonce.backends import _onnx, litemedsam

    enc_path, _ = litemedsam.onnx_paths()
    if _onnx.cached_graph(enc_path) is None:
        assert litemedsam.export_onnx(lite.model)
    ov_enc = _onnx.OpenVinoEncoder(enc_path, threads=2)
    ort_enc = _onnx.OnnxEncoder(enc_path)
    x = np.stack([preprocess_frame(FRAME)[0], preprocess_frame(np.ascontiguousarray(FRAME[::-1]))[0]])
    want = ort_enc.run(x)
    np.testing.assert_allclose(ov_enc.run(x), want, atol=1e-4)
    got: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, ov_enc.run(x[i : i + 1]))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):  # two requests at once use the throughput streams, with the same outputs
        np.testing.assert_allclose(got[i][0], want[i], atol=1e-4)
    assert ov_enc.streams == 2
