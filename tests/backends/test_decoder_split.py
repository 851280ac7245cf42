"""The split decoder (promptonce.backends._decoder_split): same outputs as the whole graph, its cache, its fallbacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from promptonce.backends import _decoder_split, registry
from promptonce.backends._decoder_split import LazyGraph, SplitDecoder

H, W = 96, 128


def _frame() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    grey = 30 + 180 * ((yy - 40) ** 2 + (xx - 50) ** 2 <= 18**2) + 140 * ((yy > 60) & (xx > 85))
    return np.repeat(grey.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _split_backend(name: str):
    pytest.importorskip("onnxruntime")
    backend = registry.get_backend(name, device="cpu")
    if not isinstance(getattr(backend, "_onnx_decoder", None), SplitDecoder):
        pytest.skip(f"{name} has no split decoder here (runtime {backend.runtime})")
    return backend


@pytest.mark.parametrize("name", ["litemedsam", "mobilesam"])
def test_the_split_decoder_gives_the_whole_graphs_outputs(name: str) -> None:
    backend = _split_backend(name)
    split = backend._onnx_decoder
    emb = backend.embed(_frame())
    other = backend.embed(np.ascontiguousarray(_frame()[::-1]))
    prompts = [{"box": np.array([28.0, 18.0, 74.0, 62.0])}, {"box": np.array([80.0, 55.0, 127.0, 95.0])}]
    if name == "mobilesam":
        prompts += [{"points": np.array([[50.0, 40.0]]), "point_labels": np.array([1]), "multimask": True},
                    {"points": np.array([[50.0, 40.0], [100.0, 80.0]]), "point_labels": np.array([1, 0])}]
    runs = split.image_runs
    for e in (emb, other, emb):
        for p in prompts:
            backend._onnx_decoder = split.whole
            try:
                want = backend.predict(e, **p)
            finally:
                backend._onnx_decoder = split  # the backend is shared (the registry keeps one)
            got = backend.predict(e, **p)
            # the same arithmetic up to float rounding: a mask pixel may flip only where its logit is ~0
            np.testing.assert_allclose(got.logits, want.logits, atol=1e-3)
            np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
            assert (got.masks != want.masks).mean() < 1e-3
    # the two different images decode differently, and each image side ran once for all its prompts
    assert not np.array_equal(backend.predict(emb, **prompts[0]).masks, backend.predict(other, **prompts[0]).masks)
    assert split.image_runs - runs == 2


class _Graph:
    def __init__(self, fn) -> None:  # noqa: ANN001
        self.fn, self.calls = fn, []

    def __call__(self, **feeds):  # noqa: ANN003
        self.calls.append(feeds)
        return self.fn(**feeds)


def test_mask_prompts_go_to_the_whole_graph_and_only_a_few_image_sides_are_kept() -> None:
    whole = _Graph(lambda **f: ["whole", float(f["image_embeddings"].sum())])
    image = _Graph(lambda image_embeddings: [image_embeddings * k for k in (1, 2, 3, 4)])
    prompt = _Graph(lambda keys, t2i_k_t, t2i_v, i2t_q, point_coords, point_labels: ["prompt", float(i2t_q.sum())])
    dec = SplitDecoder(whole, image, prompt, keep=2)
    embs = [np.full((1, 2, 2), float(i + 1), np.float32) for i in range(3)]
    coords, labels = np.zeros((1, 2, 2), np.float32), np.array([[2.0, 3.0]], np.float32)

    def call(e: np.ndarray, has: float = 0.0) -> list:
        return dec(image_embeddings=e, point_coords=coords, point_labels=labels,
                   mask_input=np.zeros((1, 1, 256, 256), np.float32), has_mask_input=np.array([has], np.float32))

    assert call(embs[0]) == ["prompt", 16.0] and call(embs[0]) == ["prompt", 16.0]
    assert len(image.calls) == 1  # the image side of one embedding runs once
    assert call(embs[1]) == ["prompt", 32.0]
    assert call(embs[0], has=1.0) == ["whole", 4.0]  # a mask prompt changes the dense prompt: whole graph
    assert len(whole.calls) == 1 and len(image.calls) == 2
    call(embs[0])  # a hit: embs[1] is now the least recently used
    assert len(image.calls) == 2
    call(embs[2])  # a third embedding drops it
    call(embs[0])
    assert len(image.calls) == 3
    call(embs[1])
    assert len(image.calls) == 4
    assert dec.image_runs == 4


def test_the_whole_graph_is_loaded_on_its_first_call_only() -> None:
    loads: list[int] = []

    def load():  # noqa: ANN202
        loads.append(1)
        return _Graph(lambda **f: ["whole"])

    lazy = LazyGraph(load)
    dec = SplitDecoder(lazy, _Graph(lambda image_embeddings: [image_embeddings] * 4),
                       _Graph(lambda **f: ["prompt"]))
    e = np.ones((1, 2, 2), np.float32)
    feeds = {"image_embeddings": e, "point_coords": np.zeros((1, 2, 2), np.float32),
             "point_labels": np.array([[2.0, 3.0]], np.float32)}
    assert dec(**feeds, has_mask_input=np.zeros(1, np.float32)) == ["prompt"]
    assert not lazy.loaded and not loads  # boxes and clicks never load it (LiteMedSAM's case)
    assert dec(**feeds, has_mask_input=np.ones(1, np.float32)) == ["whole"]
    assert dec(**feeds, has_mask_input=np.ones(1, np.float32)) == ["whole"]
    assert lazy.loaded and loads == [1]


def test_a_split_that_fails_is_recorded_not_retried_and_the_whole_graph_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    monkeypatch.setenv("PROMPTONCE_CACHE", str(tmp_path))
    image_path, prompt_path = _decoder_split.split_paths("x", "ab" * 32, 256)
    assert _decoder_split.wanted("x", "ab" * 32, 256)

    class NotSam:  # a decoder of another architecture: no transformer to split
        pass

    assert not _decoder_split.export_split(NotSam(), NotSam(), 256, image_path, prompt_path)
    assert not image_path.exists() and not prompt_path.exists()
    assert not _decoder_split.wanted("x", "ab" * 32, 256)  # recorded: later processes do not try again
    whole = object()
    assert _decoder_split.load(whole, "x", "ab" * 32, 256) is whole


def test_a_cache_from_before_the_split_gets_its_graphs_from_the_export_child(monkeypatch: pytest.MonkeyPatch) -> None:
    from promptonce.backends import _onnx

    state = {"split": False}
    children: list[str] = []

    def child(model: str) -> bool:
        children.append(model)
        state["split"] = True  # the child exported the two graphs
        return True

    monkeypatch.setattr(_onnx, "cached_graph", lambda p: p)  # encoder and whole decoder are cached
    monkeypatch.setattr(_decoder_split, "wanted", lambda *a: not state["split"])
    monkeypatch.setattr(_onnx, "export_in_subprocess", child)
    monkeypatch.setattr(_onnx, "load_graphs", lambda *a, **k: ("enc", "whole"))
    monkeypatch.setattr(_decoder_split, "load", lambda whole, *a, **k: ("split over", whole))
    assert _decoder_split.load_graphs("m", "ab" * 32, 256, lambda: None) == ("enc", ("split over", "whole"))
    assert children == ["m"]
    assert _decoder_split.load_graphs("m", "ab" * 32, 256, lambda: None) == ("enc", ("split over", "whole"))
    assert children == ["m"]  # cached now: no second child
    monkeypatch.setattr(_onnx, "load_graphs", lambda *a, **k: None)
    assert _decoder_split.load_graphs("m", "ab" * 32, 256, lambda: None) is None  # no ONNX: PyTorch
