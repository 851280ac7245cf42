"""SAM backend plumbing tests on CPU with a RANDOMLY INITIALISED TINY SAM.

These check shapes, geometry (how prompts are scaled with the frame), ordering of candidates and the
embed-once / predict-many contract. They say nothing about segmentation quality: the weights are random.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")

from promptonce.backends import sam as sam_mod  # noqa: E402
from promptonce.backends.base import Backend  # noqa: E402
from promptonce.errors import InputError, PromptError, WeightsError  # noqa: E402

IMG = 128  # tiny model input size (the real models use 1024)


def tiny_sam(img_size: int = IMG):
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    emb = 32
    enc = ImageEncoderViT(
        depth=1, embed_dim=32, img_size=img_size, mlp_ratio=2.0,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=2, patch_size=16, qkv_bias=True,
        use_rel_pos=True, global_attn_indexes=(0,), window_size=4, out_chans=emb,
    )
    pe = PromptEncoder(embed_dim=emb, image_embedding_size=(img_size // 16, img_size // 16),
                       input_image_size=(img_size, img_size), mask_in_chans=8)
    dec = MaskDecoder(num_multimask_outputs=3,
                      transformer=TwoWayTransformer(depth=1, embedding_dim=emb, mlp_dim=64, num_heads=2),
                      transformer_dim=emb, iou_head_depth=2, iou_head_hidden_dim=32)
    return Sam(image_encoder=enc, prompt_encoder=pe, mask_decoder=dec,
               pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


@pytest.fixture(scope="module")
def backend() -> sam_mod.SamBackend:
    return sam_mod.SamBackend(tiny_sam(), name="sam_vit_b", device="cpu")


def _frame(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_plumbing_protocol_and_shapes(backend: sam_mod.SamBackend) -> None:
    assert isinstance(backend, Backend)
    emb = backend.embed(_frame(60, 100))
    assert emb.frame_size == (60, 100)
    assert tuple(emb.data.shape) == (1, 32, IMG // 16, IMG // 16)
    assert emb.extra["input_size"] == (77, 128)  # longest side -> 128, 60 * 1.28 = 76.8 -> 77
    pred = backend.predict(emb, points=np.array([[50, 30]]), point_labels=np.array([1]))
    assert pred.masks.shape == (1, 60, 100) and pred.masks.dtype == bool
    assert pred.scores.shape == (1,) and pred.scores.dtype == np.float32
    assert pred.logits is not None and pred.logits.shape == (1, IMG // 4, IMG // 4)


def test_plumbing_multimask_best_first_and_logits_round_trip(backend: sam_mod.SamBackend) -> None:
    emb = backend.embed(_frame(64, 64))
    pred = backend.predict(emb, points=np.array([[10, 20], [40, 40]]), point_labels=np.array([1, 0]),
                           box=np.array([5, 5, 50, 60]), multimask=True)
    assert pred.masks.shape == (3, 64, 64)
    assert np.all(np.diff(pred.scores) <= 0)
    assert np.array_equal(pred.best, pred.masks[0])
    again = backend.predict(emb, points=np.array([[10, 20]]), point_labels=np.array([1]),
                            mask_logits=pred.logits[:1])
    assert again.masks.shape == (1, 64, 64)


def test_plumbing_predict_reuses_embedding_without_encoding(backend: sam_mod.SamBackend,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    emb = backend.embed(_frame(40, 80))
    calls = []
    orig = backend.model.image_encoder.forward
    monkeypatch.setattr(backend.model.image_encoder, "forward", lambda *a, **k: calls.append(1) or orig(*a, **k))
    p1 = backend.predict(emb, box=np.array([10, 5, 60, 30]))
    p2 = backend.predict(emb, box=np.array([10, 5, 60, 30]))
    assert calls == []
    assert np.array_equal(p1.masks, p2.masks)  # deterministic decode from the stored features


def test_plumbing_prompt_geometry_follows_resize(backend: sam_mod.SamBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 200x100 (HxW) frame is resized by 128/200 = 0.64: (x, y) = (50, 100) -> (32, 64) model pixels."""
    seen: dict[str, object] = {}
    orig = backend.model.prompt_encoder.forward

    def spy(points, boxes, masks):
        seen["points"] = None if points is None else points[0].clone()
        seen["boxes"] = None if boxes is None else boxes.clone()
        return orig(points, boxes, masks)

    monkeypatch.setattr(backend.model.prompt_encoder, "forward", spy)
    emb = backend.embed(_frame(200, 100))
    assert emb.extra["input_size"] == (128, 64)
    backend.predict(emb, points=np.array([[50.0, 100.0]]), point_labels=np.array([1]),
                    box=np.array([0.0, 0.0, 99.0, 199.0]))
    assert torch.allclose(seen["points"], torch.tensor([[[32.0, 64.0]]]))
    assert torch.allclose(seen["boxes"], torch.tensor([[0.0, 0.0, 99 * 0.64, 199 * 0.64]]))


def test_plumbing_errors(backend: sam_mod.SamBackend) -> None:
    emb = backend.embed(_frame(32, 32))
    with pytest.raises(PromptError, match="No prompt"):
        backend.predict(emb)
    with pytest.raises(PromptError, match="outside"):
        backend.predict(emb, points=np.array([[40, 5]]), point_labels=np.array([1]))
    with pytest.raises(PromptError, match="labels"):
        backend.predict(emb, points=np.array([[4, 5]]), point_labels=np.array([1, 0]))
    with pytest.raises(PromptError, match="mask_logits"):
        backend.predict(emb, mask_logits=np.zeros((1, 10, 10), np.float32))
    emb.backend = "other"
    with pytest.raises(InputError, match="embedding was made by"):
        backend.predict(emb, box=np.array([1, 1, 9, 9]))
    with pytest.raises(InputError):
        backend.embed(np.zeros((8, 8, 3), np.float32))


def test_register_all_lists_three_models(monkeypatch: pytest.MonkeyPatch) -> None:
    got = []
    sam_mod.register_all(lambda name, builder, info, check: got.append((name, info, check())))
    assert [g[0] for g in got] == ["sam_vit_b", "sam_vit_l", "sam_vit_h"]
    assert all(g[1].points and g[1].boxes and g[1].input_size == 1024 for g in got)
    monkeypatch.setenv("PROMPTONCE_OFFLINE", "1")
    monkeypatch.setenv("PROMPTONCE_CACHE", "/nonexistent-promptonce-cache")
    monkeypatch.delenv("PROMPTONCE_WEIGHTS", raising=False)
    assert "PROMPTONCE_OFFLINE" in sam_mod.sam_availability("sam_vit_b")


@pytest.mark.slow
def test_build_refuses_a_checkpoint_of_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pth"
    torch.save(tiny_sam().state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit sam_vit_b"):
        sam_mod.build_sam_backend("sam_vit_b", checkpoint=path, device="cpu")


@pytest.mark.gpu
def test_gpu_plumbing_shapes() -> None:
    b = sam_mod.SamBackend(tiny_sam(), name="sam_vit_b", device="cuda")
    assert b.info.device == "cuda"
    pred = b.predict(b.embed(_frame(60, 100)), box=np.array([10, 10, 50, 40]), multimask=True)
    assert pred.masks.shape == (3, 60, 100) and np.all(np.diff(pred.scores) <= 0)
