"""SAM's decoder split in two graphs: the image side once per embedding, the prompt side once per prompt.

Why: the engine asks the decoder many times about one image (at dataset scope about 30 calls an
X-ray: candidate boxes, their refinements, the lung-base search; 24 for one click on a CT slice).
Part of every call depends on the image alone, because without a mask prompt the dense prompt is
the constant ``no_mask_embed``: the image tokens (embedding + dense prompt, flattened), and in the
transformer's first block the keys and values of the tokens-to-image attention and the queries of
the image-to-tokens attention (there the image side still carries only the embedding and its
positional encoding). :func:`split_modules` computes that part in an *image graph* and the rest in a
*prompt graph* that takes it as input. The prompt graph also runs the output upscaling pixel by
pixel on channels-last tokens (:func:`upscale_masks`) instead of as two transposed convolutions on
channel-first maps. The outputs equal the whole decoder graph's up to float rounding (checked at
export; measured: logits within 2e-5, IoU predictions identical).

On the 2-core test machine, in one-off paired timings of the bare graphs (median of 15 rounds), the
whole graph took 52.6 ms a call, the prompt graph 33.5 ms (39.1 ms with the channel-first
upscaling), and the image graph about 5 ms once per embedding; ``benchmarks/decoder_split.py``
times whole ``predict`` calls.

:class:`SplitDecoder` is called like the whole decoder's session (same feeds, same outputs). It
keeps the image side of the last few embeddings (about 10 MB each) and sends a call with a mask
prompt (``has_mask_input`` 1: MobileSAM's refinement from earlier logits) to the whole graph.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import _torchutil as tu

__all__ = [
    "IMAGE_OUTPUTS",
    "LazyGraph",
    "SplitDecoder",
    "export_model",
    "export_split",
    "load",
    "load_graphs",
    "split_modules",
    "split_paths",
    "wanted",
]

logger = logging.getLogger(__name__)

IMAGE_OUTPUTS: tuple[str, ...] = ("keys", "t2i_k_t", "t2i_v", "i2t_q")
"""The image graph's outputs, which are the prompt graph's first inputs."""

PROMPT_INPUTS: tuple[str, ...] = (*IMAGE_OUTPUTS, "point_coords", "point_labels")
DEFAULT_KEEP = 2
"""Embeddings whose image side a :class:`SplitDecoder` keeps (about 10 MB each). A dataset-scope run
decodes one image at a time (20 X-rays: 35 image-side runs with 1, 2 or 4 kept); 2 lets two app
sessions take turns."""


SPLIT_RECIPE = "2"
"""In the split graphs' file names; changed with the split's recipe so that older exports are not reused."""


def split_paths(model: str, key: str, input_size: int) -> tuple[Path, Path]:
    """The cache files of a model's image and prompt decoder graphs."""
    from ._onnx import cache_path

    return (cache_path(f"{model}_decoder_split{SPLIT_RECIPE}_image", key, input_size),
            cache_path(f"{model}_decoder_split{SPLIT_RECIPE}_prompt", key, input_size))


def _failed_marker(prompt_path: Path) -> Path:
    return prompt_path.with_name(prompt_path.name + ".failed")


def wanted(model: str, key: str, input_size: int) -> bool:
    """True when the split graphs are not cached and no export of them has failed before."""
    from ._onnx import cached_graph

    image_path, prompt_path = split_paths(model, key, input_size)
    if _failed_marker(prompt_path).exists():
        return False
    return cached_graph(image_path) is None or cached_graph(prompt_path) is None


def load(whole: Any, model: str, key: str, input_size: int, threads: int | None = None, spinning: bool = True) -> Any:
    """A :class:`SplitDecoder` over ``whole`` when the split graphs are cached and load, else ``whole``."""
    from ._onnx import OnnxGraph, _remove, cached_graph

    paths = split_paths(model, key, input_size)
    if any(cached_graph(p) is None for p in paths):
        return whole
    try:
        image, prompt = (OnnxGraph(p, threads=threads, spinning=spinning) for p in paths)
    except Exception as exc:  # noqa: BLE001 - a corrupt cache file: the whole graph still decodes
        logger.warning("cannot load the split %s decoder (%s); removing it, using the whole graph", model, exc)
        for p in paths:
            _remove(p)
        return whole
    path = getattr(whole, "path", None)
    if path is not None:  # drop the loaded whole graph; it comes back if a mask prompt needs it
        whole = LazyGraph(lambda: OnnxGraph(path, threads=threads, spinning=spinning))
    return SplitDecoder(whole, image, prompt)


def upscale_masks(upscaling: Any, keys: Any, hyper: Any) -> Any:
    """SAM's output upscaling and mask product, pixel by pixel on channels-last tokens.

    ``upscaling`` is ``MaskDecoder.output_upscaling``: ConvTranspose2d(k=2, s=2) -> LayerNorm2d ->
    activation -> ConvTranspose2d(k=2, s=2) -> activation. A 2x2 transposed convolution with stride 2
    maps each input pixel to its own 2x2 output pixels, so every step is per pixel: each becomes a
    matrix product, a layer norm over the last axis and the activation, on the tokens as the
    transformer leaves them (``keys`` (1, h*w, C)), in whatever order the pixels come. The pixels
    are put in image order only at the end, on the masks (``hyper`` (1, masks, C2) -> (1, masks,
    4h, 4w)), instead of transposing the 64- and 32-channel maps (one-off: the prompt graph took
    39.1 ms with the module's upscaling, 33.5 ms with this). Same values as the module up to float
    rounding (checked at export).
    """
    torch = tu.import_torch()
    up1, norm, act1, up2, act2 = upscaling
    for up in (up1, up2):
        if tuple(up.kernel_size) != (2, 2) or tuple(up.stride) != (2, 2) or tuple(up.padding) != (0, 0):
            raise ValueError(f"the output upscaling is not 2x2 with stride 2 ({up}); cannot run it pixel by pixel")
    n, c = keys.shape[1], keys.shape[2]
    side = int(round(math.sqrt(n)))
    c1, c2 = up1.weight.shape[1], up2.weight.shape[1]
    # ConvTranspose2d weight (in, out, kh, kw) -> (in, kh * kw * out): output sub-pixel major
    x = (keys @ up1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1)).reshape(1, n * 4, c1) + up1.bias
    x = act1(torch.nn.functional.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
    x = (x @ up2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)).reshape(1, n * 16, c2) + up2.bias
    masks = act2(x) @ hyper.transpose(1, 2)  # (1, pixels as (i, j, a, b, c, d), masks)
    k = masks.shape[-1]
    # output row 4i + 2a + c, column 4j + 2b + d
    masks = masks.reshape(1, side, side, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return masks.reshape(1, k, 4 * side, 4 * side)


def export_model(model: str, key: str, input_size: int, torch_model: Callable[[], Any]) -> bool:
    """:func:`promptonce.backends._onnx.export_model`, then the split decoder's two graphs.

    The split graphs only make decoding faster: their failure is recorded (not retried) and the
    result is still True when the encoder and the whole decoder are cached.
    """
    from . import _onnx

    torch_model = functools.lru_cache(maxsize=1)(torch_model)  # built once for both exports
    if not _onnx.export_model(model, key, input_size, torch_model):
        return False
    if wanted(model, key, input_size):
        net = torch_model()
        export_split(net.prompt_encoder, net.mask_decoder, input_size, *split_paths(model, key, input_size))
    return True


def load_graphs(
    model: str,
    key: str,
    input_size: int,
    torch_model: Callable[[], Any],
    decoder_threads: int | None = None,
    decoder_spinning: bool = True,
) -> tuple[Any, Any] | None:
    """:func:`promptonce.backends._onnx.load_graphs` with the decoder split when its graphs are there.

    A cache written before the split decoder existed gets its two graphs from the export child first.
    Returns the encoder and a :class:`SplitDecoder` (or the whole decoder graph's session), or None.
    """
    from . import _onnx

    if wanted(model, key, input_size) and all(
        _onnx.cached_graph(p) is not None for p in _onnx.graph_paths(model, key, input_size)
    ):
        _onnx.export_in_subprocess(model)
    graphs = _onnx.load_graphs(model, key, input_size, torch_model, decoder_threads, decoder_spinning)
    if graphs is None:
        return None
    enc, dec = graphs
    return enc, load(dec, model, key, input_size, threads=decoder_threads, spinning=decoder_spinning)


def _record_failure(prompt_path: Path, why: str) -> None:
    try:
        tu.atomic_write(_failed_marker(prompt_path), lambda tmp: tmp.write_text(why + "\n"))
    except OSError as exc:
        logger.warning("cannot record the failed split export (%s)", exc)


def split_modules(prompt_encoder: Any, mask_decoder: Any, input_size: int) -> tuple[Any, Any]:
    """The image part and the prompt part of :func:`promptonce.backends._onnx.decoder_module` without a mask prompt.

    Image part: ``image_embeddings`` (1, 256, 64, 64) -> ``keys`` (1, 4096, 256), ``t2i_k_t``
    (1, heads, c, 4096), ``t2i_v`` and ``i2t_q`` (1, heads, 4096, c). Prompt part: those four, then
    ``point_coords`` (1, N, 2) and ``point_labels`` (1, N) as in the whole graph -> ``low_res_masks``
    (1, 4, 256, 256), ``iou_predictions`` (1, 4).
    """
    torch = tu.import_torch()
    transformer = mask_decoder.transformer
    first = transformer.layers[0]
    if not getattr(first, "skip_first_layer_pe", False):
        raise ValueError("the decoder's first block uses positional encodings on its tokens; cannot split it")
    heads = first.cross_attn_token_to_image.num_heads

    def separate(x: Any) -> Any:
        b, n, c = x.shape
        return x.reshape(b, n, heads, c // heads).transpose(1, 2)

    def recombine(x: Any) -> Any:
        b, h, n, c = x.shape
        return x.transpose(1, 2).reshape(b, n, h * c)

    class ImagePart(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pe, self.md = prompt_encoder, mask_decoder

        def forward(self, image_embeddings):  # noqa: ANN001, ANN202
            dense = self.pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
            keys = (image_embeddings + dense).flatten(2).permute(0, 2, 1)
            key_pe = self.pe.get_dense_pe().flatten(2).permute(0, 2, 1)
            layer = self.md.transformer.layers[0]
            t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
            k = keys + key_pe
            return (
                keys,
                separate(t2i.k_proj(k)).transpose(2, 3).contiguous(),
                separate(t2i.v_proj(keys)).contiguous(),
                separate(i2t.q_proj(k)).contiguous(),
            )

    class PromptPart(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pe, self.md = prompt_encoder, mask_decoder
            self.size = float(input_size)

        def forward(self, keys, t2i_k_t, t2i_v, i2t_q, point_coords, point_labels):  # noqa: ANN001, ANN202
            pe, md = self.pe, self.md
            # the sparse prompt, as decoder_module (segment-anything's SamOnnxModel) builds it
            emb = pe.pe_layer._pe_encoding((point_coords + 0.5) / self.size)
            labels = point_labels.unsqueeze(-1).expand_as(emb)
            emb = emb * (labels != -1)
            emb = emb + pe.not_a_point_embed.weight * (labels == -1)
            for i in range(pe.num_point_embeddings):
                emb = emb + pe.point_embeddings[i].weight * (labels == i)
            # MaskDecoder.predict_masks and TwoWayTransformer.forward, the first block's image side given
            tokens = torch.cat((torch.cat([md.iou_token.weight, md.mask_tokens.weight], 0).unsqueeze(0), emb), 1)
            key_pe = pe.get_dense_pe().flatten(2).permute(0, 2, 1)
            tr = md.transformer
            layer = tr.layers[0]
            queries = layer.norm1(layer.self_attn(q=tokens, k=tokens, v=tokens))
            a = layer.cross_attn_token_to_image
            q = separate(a.q_proj(queries + tokens))
            attn = torch.softmax((q @ t2i_k_t) / math.sqrt(q.shape[-1]), dim=-1)
            queries = layer.norm2(queries + a.out_proj(recombine(attn @ t2i_v)))
            queries = layer.norm3(queries + layer.mlp(queries))
            b = layer.cross_attn_image_to_token
            qt = queries + tokens
            k, v = separate(b.k_proj(qt)), separate(b.v_proj(queries))
            attn = torch.softmax((i2t_q @ k.transpose(2, 3)) / math.sqrt(k.shape[-1]), dim=-1)
            keys = layer.norm4(keys + b.out_proj(recombine(attn @ v)))
            for blk in tr.layers[1:]:
                queries, keys = blk(queries=queries, keys=keys, query_pe=tokens, key_pe=key_pe)
            hs = tr.norm_final_attn(queries + tr.final_attn_token_to_image(q=queries + tokens, k=keys + key_pe, v=keys))
            n = md.num_mask_tokens
            hyper = torch.stack([md.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in range(n)], dim=1)
            return upscale_masks(md.output_upscaling, keys, hyper), md.iou_prediction_head(hs[:, 0, :])

    return ImagePart().eval(), PromptPart().eval()


def export_split(prompt_encoder: Any, mask_decoder: Any, input_size: int, image_path: Path, prompt_path: Path) -> bool:
    """Exports (once) and verifies the two graphs; True when both are cached.

    Before export the two parts are checked against the whole decoder module in PyTorch (box and
    click prompts; max difference <= 1e-4), then each exported graph against its part (as every export).
    A failure is recorded beside the prompt graph's file (``.failed``), so later processes use the
    whole graph without trying again; a new export recipe (``EXPORT_TAG``, :data:`SPLIT_RECIPE`) or
    checkpoint tries anew, and so does deleting that file.
    """
    from . import _onnx

    if _onnx.cached_graph(image_path) is not None and _onnx.cached_graph(prompt_path) is not None:
        return True
    ok = _export_split(prompt_encoder, mask_decoder, input_size, image_path, prompt_path)
    if not ok:
        _record_failure(prompt_path, "the split decoder export failed; the whole decoder graph is used")
    return ok


def _export_split(prompt_encoder: Any, mask_decoder: Any, input_size: int, image_path: Path, prompt_path: Path) -> bool:
    from . import _onnx

    torch = tu.import_torch()
    try:
        image_part, prompt_part = split_modules(prompt_encoder, mask_decoder, input_size)
        whole = _onnx.decoder_module(prompt_encoder, mask_decoder, input_size)
        g = torch.Generator().manual_seed(0)
        emb = torch.randn(1, 256, 64, 64, generator=g) * 0.1
        s = float(input_size)
        prompts = [
            (torch.tensor([[[0.2 * s, 0.3 * s], [0.7 * s, 0.8 * s]]]), torch.tensor([[2.0, 3.0]])),
            (torch.tensor([[[0.4 * s, 0.5 * s], [0.1 * s, 0.1 * s], [0.0, 0.0]]]), torch.tensor([[1.0, 0.0, -1.0]])),
        ]
        with torch.no_grad():
            sides = image_part(emb)
            for coords, labels in prompts:
                ref = whole(emb, coords, labels, torch.zeros(1, 1, 256, 256), torch.zeros(1))
                got = prompt_part(*sides, coords, labels)
                diff = max(float((r - x).abs().max()) for r, x in zip(ref, got))
                if diff > 1e-4:
                    logger.warning("the split decoder disagrees with the whole decoder (max diff %.3g); "
                                   "not using it", diff)
                    return False
    except Exception as exc:  # noqa: BLE001 - an architecture it cannot split keeps the whole graph
        logger.warning("cannot split the decoder (%s); the whole decoder graph is used", exc)
        return False
    if _onnx.export_graph(image_part, (emb,), image_path, ["image_embeddings"], list(IMAGE_OUTPUTS)) is None:
        return False
    coords, labels = prompts[0]
    return _onnx.export_graph(
        prompt_part, (*sides, coords, labels), prompt_path, list(PROMPT_INPUTS), ["low_res_masks", "iou_predictions"],
        dynamic_axes={"point_coords": {1: "points"}, "point_labels": {1: "points"}},
    ) is not None


class LazyGraph:
    """A graph session created on its first call (``load()`` makes it), called like the session.

    The split decoder keeps the whole decoder graph only for mask prompts; loading it lazily spares
    its weights (16 MB) and buffers where none comes. (On issue 7's 300-slice phantom the peak RSS
    did not move measurably with it: 1481.7 MiB loaded at once, 1481.1 lazily.)
    """

    def __init__(self, load: Callable[[], Any]) -> None:
        self._load, self._graph = load, None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._graph is not None

    def __call__(self, **feeds: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            if self._graph is None:
                self._graph = self._load()
            graph = self._graph
        return graph(**feeds)


class SplitDecoder:
    """The decoder as an image graph plus a prompt graph, called like the whole decoder's session.

    Args:
        whole: the whole decoder graph (calls with a mask prompt go there); :func:`load` gives a
            :class:`LazyGraph`, loaded on the first such call (LiteMedSAM never makes one).
        image: the image graph.
        prompt: the prompt graph.
        keep: embeddings whose image side is kept (least recently used dropped first).

    The image side is kept per embedding array (its memory address, shape and strides, with a reference
    held so the address cannot be reused while kept); an embedding must not be changed in place.
    """

    def __init__(self, whole: Any, image: Any, prompt: Any, keep: int = DEFAULT_KEEP) -> None:
        self.whole, self.image, self.prompt = whole, image, prompt
        self.keep = max(1, int(keep))
        self._sides: collections.OrderedDict[tuple, tuple[np.ndarray, list[np.ndarray]]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.image_runs = 0

    def _image_side(self, embedding: np.ndarray) -> list[np.ndarray]:
        key = (embedding.__array_interface__["data"][0], embedding.shape, embedding.strides)
        with self._lock:
            hit = self._sides.get(key)
            if hit is not None:
                self._sides.move_to_end(key)
                return hit[1]
        sides = self.image(image_embeddings=embedding)
        with self._lock:
            self.image_runs += 1
            self._sides[key] = (embedding, sides)
            self._sides.move_to_end(key)
            while len(self._sides) > self.keep:
                self._sides.popitem(last=False)
        return sides

    def __call__(self, **feeds: np.ndarray) -> list[np.ndarray]:
        has_mask = feeds.get("has_mask_input")
        if has_mask is not None and float(np.asarray(has_mask).reshape(-1)[0]) != 0.0:
            return self.whole(**feeds)
        sides = self._image_side(feeds["image_embeddings"])
        return self.prompt(**dict(zip(IMAGE_OUTPUTS, sides, strict=True)),
                           point_coords=feeds["point_coords"], point_labels=feeds["point_labels"])
