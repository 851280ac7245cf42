"""SAM 2 / SAM 2.1 (Ravi et al. 2024): image prompts and CONSTANT-MEMORY propagation through sequences.

Two paths over one model (a ``sam2.sam2_video_predictor.SAM2VideoPredictor``, i.e. a ``SAM2Base``):

* **Image** (:meth:`Sam2Backend.embed` / :meth:`Sam2Backend.predict`): what ``SAM2ImagePredictor``
  does. The embedding holds its features dict (``image_embed`` float ``(1, 256, S/16, S/16)`` and two
  high-resolution maps), so a second click costs only the decoder.
* **Sequence** (:meth:`Sam2Backend.propagate`): SAM 2's memory tracking through slices as video frames,
  built on ``SAM2VideoPredictor``'s own per-frame code (``add_new_points_or_box``, ``add_new_mask``,
  ``propagate_in_video_preflight``, ``_run_single_frame_inference``) with a light inference state:

  - frames come from ``get_frame(i)`` (uint8 RGB ``(H, W, 3)``, e.g. a windowed slice) on demand,
    resized to the model size and normalised in memory: no JPEG folder, no lossy round trip; only
    the last two are cached;
  - after each frame, non-conditioning outputs the next frame can no longer read are dropped: the
    memory attention reads the conditioning (prompted) frames and the last ``num_maskmem - 1``
    frames' memories (times the temporal stride), and the object pointers of the last
    ``max_obj_ptrs_in_encoder - 1`` frames; so the state holds at most ``num_maskmem - 1`` full
    frame memories plus ``max_obj_ptrs_in_encoder - 1`` pointer-only entries, whatever the length;
  - results are streamed out frame by frame (a generator) and never kept.

  Peak memory therefore does not depend on the number of frames; the stock ``propagate_in_video``
  keeps every frame tensor (``3 x S x S`` float32 = 12 MB at S = 1024) and every frame's outputs.
  Inside one :meth:`propagate` call the results equal the stock predictor's on the same frames
  (checked in the tests).

  Each :meth:`propagate` call starts from a fresh state holding only the seeds: a forward and a
  backward pass from the prompted slice are independent (the stock predictor, run twice on one
  state, would let the backward pass read the forward pass's memories as if they were its past).

Seeds, the seed-frame scheme and corrections:

* ``seeds`` maps a frame index to a list of :class:`promptonce.types.ObjectPrompt` (clicks and/or a
  box, through ``add_new_points_or_box``) or ``(object_id, bool mask (H, W))`` pairs (through
  ``add_new_mask``). Every seeded frame is a conditioning frame for the whole call.
* :meth:`Sam2Backend.propagate_with_seed_frame` implements the Prompt Once paper's "fake seed": the
  prompted seed frame (from another volume) is placed before the volume's frames as frame 0 with its
  prompt, propagated over the volume, and frame 0 is dropped from the output (indices shifted back);
  each volume is processed independently of the others. A plain propagation over one long
  concatenated sequence needs nothing special: pass a ``get_frame`` over the concatenation.
* Corrections: after a new prompt on slice ``k``, with ``(lo, hi)`` from
  :func:`promptonce.annotation.correction_range` (the package's one correction-range rule), re-run only
  ``propagate(start=k, end=hi)`` forward and ``propagate(start=k, reverse=True, end=lo)`` backward,
  passing ALL prompted slices (old and new) as ``seeds``. Slices beyond the neighbouring
  prompted slices keep their results: a prompted slice's own mask does not depend on memory, and the
  tracking past it is anchored on it. (Strictly, every conditioning frame is visible to the memory
  attention of every frame, so far slices could change slightly; re-run everything for exactness.)

Precision: on CUDA, bfloat16 autocast and TF32 (as in SAM 2's own demo); on the CPU float32, with a
warning in the log that it is slow. Autocast is entered per frame, never across a ``yield``.

Names: ``sam2_hiera_{t,s,b+,l}`` and ``sam2.1_hiera_{t,s,b+,l}``; a compatible custom checkpoint
(e.g. MedSAM2, 512 px) is built with ``build_sam2_backend(name, checkpoint=..., config=...)``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, ModelUnavailableError, PromptError, WeightsError
from ..types import ObjectPrompt
from . import _torchutil as _tu
from .base import BackendInfo, Embedding, Prediction
from .sam import _weights_available, check_frame, check_prompts, load_strict, resolve_device, sort_prediction, warn_cpu
from .weights import load_state_dict, resolve_checkpoint

__all__ = [
    "SAM2_MODELS",
    "Sam2Backend",
    "build_sam2_model",
    "build_sam2_backend",
    "tiny_random_model",
    "sam2_info",
    "sam2_availability",
    "register_all",
]

logger = logging.getLogger(__name__)

SAM2_MODELS: dict[str, tuple[str, str]] = {
    "sam2_hiera_t": ("configs/sam2/sam2_hiera_t.yaml", "SAM 2 Hiera-T (Meta, 2024)"),
    "sam2_hiera_s": ("configs/sam2/sam2_hiera_s.yaml", "SAM 2 Hiera-S (Meta, 2024)"),
    "sam2_hiera_b+": ("configs/sam2/sam2_hiera_b+.yaml", "SAM 2 Hiera-B+ (Meta, 2024)"),
    "sam2_hiera_l": ("configs/sam2/sam2_hiera_l.yaml", "SAM 2 Hiera-L (Meta, 2024)"),
    "sam2.1_hiera_t": ("configs/sam2.1/sam2.1_hiera_t.yaml", "SAM 2.1 Hiera-T (Meta, 2024)"),
    "sam2.1_hiera_s": ("configs/sam2.1/sam2.1_hiera_s.yaml", "SAM 2.1 Hiera-S (Meta, 2024)"),
    "sam2.1_hiera_b+": ("configs/sam2.1/sam2.1_hiera_b+.yaml", "SAM 2.1 Hiera-B+ (Meta, 2024)"),
    "sam2.1_hiera_l": ("configs/sam2.1/sam2.1_hiera_l.yaml", "SAM 2.1 Hiera-L (Meta, 2024)"),
}

_IMG_MEAN = (0.485, 0.456, 0.406)
_IMG_STD = (0.229, 0.224, 0.225)

SeedItem = ObjectPrompt | tuple[int, np.ndarray]
PropagateOutput = tuple[int, dict[int, np.ndarray], dict[int, float]]


# ----------------------------------------------------------------------------- model building
def _import_sam2() -> Any:
    return _tu.import_quietly("sam2", "sam2==1.1.0 (SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0)")


def _config_path(config: str | os.PathLike[str]) -> Path:
    p = Path(config).expanduser()
    if p.is_file():
        return p
    name = os.fspath(config)
    if name in SAM2_MODELS:
        name = SAM2_MODELS[name][0]
    pkg = Path(_import_sam2().__file__).parent
    for cand in (pkg / name, pkg / "configs" / name, pkg / f"{name}.yaml", pkg / "configs" / f"{name}.yaml"):
        if cand.is_file():
            return cand
    raise InputError(
        f"SAM 2 config {os.fspath(config)!r} not found as a file nor inside the sam2 package; give the path "
        f"of the .yaml that goes with the checkpoint (e.g. configs/sam2.1/sam2.1_hiera_t.yaml)."
    )


def build_sam2_model(
    config: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    device: str = "cpu",
    overrides: Mapping[str, Any] | None = None,
    postprocessing: bool = True,
    seed: int | None = None,
) -> Any:
    """Builds a ``SAM2VideoPredictor`` from a SAM 2 config, optionally loading a checkpoint.

    Args:
        config: a model name (``"sam2.1_hiera_t"``), a config path inside the sam2 package
            (``"configs/sam2.1/sam2.1_hiera_t.yaml"``) or the path of any compatible ``.yaml``
            (e.g. MedSAM2's ``sam2.1_hiera_t512.yaml``).
        checkpoint: path of the weights (``{"model": state_dict}`` or a bare state dict); None keeps
            the random initialisation (plumbing tests, speed/memory benchmarks).
        device: torch device.
        overrides: dotted config keys -> values applied after loading, e.g.
            ``{"model.image_size": 256}``.
        postprocessing: apply the settings of ``build_sam2_video_predictor`` (stability-based
            multimask fallback, binarised click masks in memory, hole filling when sam2's CUDA
            extension is present).
        seed: torch random seed for the initialisation, or None.

    Raises:
        ModelUnavailableError: sam2/hydra are not installed.
        WeightsError: the checkpoint does not fit the config.
    """
    _import_sam2()
    torch = _tu.import_torch()
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = _config_path(config)
    cfg = OmegaConf.load(path)
    if "model" not in cfg:
        raise InputError(f"{path} is not a SAM 2 model config (it has no 'model' section).")
    settings: dict[str, Any] = {"model._target_": "sam2.sam2_video_predictor.SAM2VideoPredictor"}
    if postprocessing:
        settings.update({
            "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
            "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
            "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
            "model.binarize_mask_from_pts_for_mem_enc": True,
            # Hole filling needs sam2's CUDA extension; without it sam2 warns on every frame.
            "model.fill_hole_area": 8 if importlib.util.find_spec("sam2._C") is not None else 0,
        })
    settings.update(overrides or {})
    for key, value in settings.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.resolve(cfg)
    if seed is not None:
        torch.manual_seed(seed)
    model = instantiate(cfg.model, _recursive_=True)
    if checkpoint is not None:
        state = load_state_dict(checkpoint)
        if isinstance(state.get("model"), dict):
            state = state["model"]
        load_strict(model, state, checkpoint, path.stem)
    return model.to(device).eval()


def tiny_random_model(image_size: int = 128, seed: int = 0, device: str = "cpu") -> Any:
    """A RANDOMLY INITIALISED, shrunken SAM 2.1 for plumbing tests and CPU benchmarks (not for use).

    The SAM 2.1 Hiera-T config with 1-1-2-1 Hiera blocks, one memory-attention layer and a small
    input size; everything else (memory bank, object pointers, heads) as in the real model.
    """
    return build_sam2_model(
        "sam2.1_hiera_t",
        device=device,
        seed=seed,
        overrides={
            "model.image_size": image_size,
            "model.image_encoder.trunk.embed_dim": 32,
            "model.image_encoder.trunk.stages": [1, 1, 2, 1],
            "model.image_encoder.trunk.global_att_blocks": [3],
            "model.image_encoder.neck.backbone_channel_list": [256, 128, 64, 32],
            "model.memory_attention.num_layers": 1,
            "model.memory_attention.layer.dim_feedforward": 256,
            "model.memory_encoder.fuser.num_layers": 1,
        },
    )


# ----------------------------------------------------------------------------- the light state
class _LazyFrames:
    """Frame source for SAM 2's state: ``frames[i]`` is float32 ``(3, S, S)`` normalised, on the device.

    Frames are loaded through ``get_frame(i)`` on first access and only the last ``keep`` are cached,
    so memory does not grow with the number of frames.
    """

    def __init__(self, n: int, get_frame: Callable[[int], np.ndarray], image_size: int, device: str,
                 keep: int = 2) -> None:
        torch = _tu.import_torch()
        self.n = n
        self.get_frame = get_frame
        self.image_size = image_size
        self.device = device
        self.keep = keep
        self.loads = 0
        self._cache: OrderedDict[int, tuple[Any, tuple[int, int]]] = OrderedDict()
        self._mean = torch.tensor(_IMG_MEAN, dtype=torch.float32, device=device)[:, None, None]
        self._std = torch.tensor(_IMG_STD, dtype=torch.float32, device=device)[:, None, None]

    def __len__(self) -> int:
        return self.n

    def _load(self, i: int) -> tuple[Any, tuple[int, int]]:
        if not 0 <= i < self.n:
            raise IndexError(f"frame {i} outside 0..{self.n - 1}")
        hit = self._cache.get(i)
        if hit is not None:
            self._cache.move_to_end(i)
            return hit
        torch = _tu.import_torch()
        import torch.nn.functional as F

        frame = check_frame(self.get_frame(i))
        self.loads += 1
        with torch.inference_mode():
            x = torch.from_numpy(frame).to(self.device).permute(2, 0, 1)[None].float().div_(255.0)
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)[0]
            x = (x - self._mean) / self._std
        entry = (x, (int(frame.shape[0]), int(frame.shape[1])))
        self._cache[i] = entry
        while len(self._cache) > self.keep:
            self._cache.popitem(last=False)
        return entry

    def __getitem__(self, i: int) -> Any:
        return self._load(int(i))[0]

    def size(self, i: int) -> tuple[int, int]:
        """``(H, W)`` of frame ``i`` as handed over."""
        return self._load(int(i))[1]

    def __iter__(self) -> Iterator[Any]:  # pragma: no cover - sam2 never iterates; guard against it
        raise TypeError("frames are loaded one at a time; index them")


def _new_state(frames: _LazyFrames, device: str) -> dict[str, Any]:
    """The same keys as ``SAM2VideoPredictor.init_state`` builds, over lazily loaded frames."""
    return {
        "images": frames,
        "num_frames": len(frames),
        "offload_video_to_cpu": False,
        "offload_state_to_cpu": False,
        "video_height": 1,  # set to each seeded frame's size while adding its prompts
        "video_width": 1,
        "device": device,
        "storage_device": device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }


# ----------------------------------------------------------------------------- the backend
class Sam2Backend:
    """SAM 2 behind :class:`~.base.Backend` (image path) and :class:`~.base.SequenceBackend` (tracking).

    Args:
        model: a ``SAM2VideoPredictor`` (see :func:`build_sam2_model`).
        name: backend name.
        device: torch device; None picks CUDA when available.
        title: UI title.
        medical: True for medical fine-tunes (MedSAM2).
    """

    def __init__(self, model: Any, name: str = "sam2.1_hiera_t", device: str | None = None, title: str = "",
                 medical: bool = False) -> None:
        torch = _tu.import_torch()
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.image_size = int(model.image_size)
        s = self.image_size
        self._image_predictor = SAM2ImagePredictor(self.model)
        self._image_predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
        self._lock = threading.Lock()
        self._torch = torch
        self.info = BackendInfo(
            name=name, title=title or SAM2_MODELS.get(name, (None, name))[1], points=True, boxes=True,
            input_size=s, medical=medical, sequence=True, device=self.device,
        )
        #: Diagnostics of the last propagation step (entries held in the state), for tests/benchmarks.
        self.last_stats: dict[str, int] = {}
        warn_cpu(name, self.device)

    # ------------------------------------------------------------------ precision
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.startswith("cuda"):
            return self._torch.autocast("cuda", dtype=self._torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ image path
    def embed(self, frame: np.ndarray) -> Embedding:
        """Encodes one frame like ``SAM2ImagePredictor.set_image``.

        Args:
            frame: uint8 ``(H, W, 3)`` RGB.

        Returns:
            ``data`` = the predictor's features dict: ``image_embed`` ``(1, 256, S/16, S/16)`` and
            ``high_res_feats`` ``[(1, 32, S/4, S/4), (1, 64, S/8, S/8)]`` (S = model input size).
        """
        img = check_frame(frame)
        with self._lock, self._torch.inference_mode(), self._autocast():
            self._image_predictor.set_image(img)
            feats = self._image_predictor._features
            self._image_predictor.reset_predictor()
        return Embedding(data=feats, frame_size=(int(img.shape[0]), int(img.shape[1])), backend=self.info.name)

    def predict(
        self,
        embedding: Embedding,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_logits: np.ndarray | None = None,
        multimask: bool = False,
    ) -> Prediction:
        """Decodes one object's masks from a stored embedding (no re-encoding).

        Returns:
            Masks bool ``(K, H, W)`` best first, predicted IoU scores ``(K,)``, logits ``(K, S/4, S/4)``.
        """
        _tu.check_embedding(embedding, self.info.name)
        pts, lbl, bx, ml = check_prompts(embedding.frame_size, points, point_labels, box, mask_logits,
                                         self.image_size // 4)
        p = self._image_predictor
        with self._lock, self._torch.inference_mode(), self._autocast():
            p._features = embedding.data
            p._orig_hw = [embedding.frame_size]
            p._is_image_set = True
            try:
                masks, scores, logits = p.predict(point_coords=pts, point_labels=lbl, box=bx, mask_input=ml,
                                                  multimask_output=multimask, normalize_coords=True)
            finally:
                p.reset_predictor()
        return sort_prediction(np.asarray(masks) > 0.5, np.asarray(scores, np.float32), np.asarray(logits))

    # ------------------------------------------------------------------ sequence path
    def _windows(self, num_frames: int) -> tuple[int, int]:
        """How far back (in frames) full memories and pointer-only entries must be kept after a step."""
        m = self.model
        stride = max(1, int(m.memory_temporal_stride_for_eval))
        mem = stride * (m.num_maskmem - 2) if m.num_maskmem >= 2 else -1
        ptr = min(num_frames, m.max_obj_ptrs_in_encoder) - 2 if m.use_obj_ptrs_in_encoder else -1
        return mem, max(mem, ptr)

    def _prune(self, state: dict[str, Any], t: int, reverse: bool, windows: tuple[int, int]) -> None:
        mem, ptr = windows
        full = ptr_only = 0
        for od in state["output_dict_per_obj"].values():
            nc = od["non_cond_frame_outputs"]
            for k in list(nc):
                d = (k - t) if reverse else (t - k)
                if d < 0 or d > ptr:
                    del nc[k]
                elif d > mem:
                    if nc[k].get("maskmem_features") is not None:
                        v = nc[k]
                        nc[k] = {"obj_ptr": v["obj_ptr"], "object_score_logits": v["object_score_logits"],
                                 "maskmem_features": None, "maskmem_pos_enc": None, "pred_masks": None}
                    ptr_only += 1
                else:
                    full += 1
        self.last_stats = {
            "full_memories": full,
            "pointer_only": ptr_only,
            "cond_frames": sum(len(od["cond_frame_outputs"]) for od in state["output_dict_per_obj"].values()),
            "cached_features": len(state["cached_features"]),
            "cached_frames": len(state["images"]._cache),
            "frames_loaded": state["images"].loads,
        }

    def _add_seeds(self, state: dict[str, Any], seeds: Mapping[int, Sequence[SeedItem]]) -> None:
        torch = self._torch
        m = self.model
        frames: _LazyFrames = state["images"]
        n = len(frames)
        for f in sorted(seeds):
            if not 0 <= f < n:
                raise PromptError(f"A seed is on slice {f}, but the sequence has {n} slices (0..{n - 1}).")
            h, w = frames.size(f)
            state["video_height"], state["video_width"] = h, w
            seen: set[int] = set()
            for item in seeds[f]:
                if isinstance(item, ObjectPrompt):
                    oid = item.object_id
                    coords, labels = item.point_arrays()
                    box = None if item.box is None else item.box.as_array()
                    pts, lbl, bx, _ = check_prompts((h, w), coords, labels, box, None, 1)
                    scale = np.array([w, h], np.float32)
                    kwargs: dict[str, Any] = {}
                    if pts is not None:
                        kwargs.update(points=pts / scale, labels=lbl)
                    if bx is not None:
                        kwargs["box"] = bx / np.concatenate([scale, scale])
                    if oid in seen:
                        raise PromptError(f"Object {oid} has two seeds on slice {f}; merge them into one prompt.")
                    with torch.inference_mode(), self._autocast():
                        m.add_new_points_or_box(state, f, oid, normalize_coords=False, **kwargs)
                else:
                    try:
                        oid, mask = int(item[0]), np.asarray(item[1])
                    except (TypeError, IndexError, ValueError) as e:
                        raise PromptError(
                            f"A seed must be an ObjectPrompt or an (object_id, mask) pair; got {type(item).__name__}."
                        ) from e
                    if mask.shape != (h, w):
                        raise PromptError(f"The seed mask of object {oid} on slice {f} is {mask.shape}; the "
                                          f"slice is {(h, w)}.")
                    if oid in seen:
                        raise PromptError(f"Object {oid} has two seeds on slice {f}; give one.")
                    if not mask.any():
                        logger.warning("seed mask of object %d on slice %d is empty", oid, f)
                    with torch.inference_mode(), self._autocast():
                        m.add_new_mask(state, f, oid, torch.from_numpy(mask.astype(bool)))
                seen.add(oid)

    def _step(self, state: dict[str, Any], t: int, reverse: bool) -> PropagateOutput:
        torch = self._torch
        import torch.nn.functional as F

        m = self.model
        frames: _LazyFrames = state["images"]
        h, w = frames.size(t)
        with torch.inference_mode(), self._autocast():
            low_res, logits = [], []
            for obj_idx in range(len(state["obj_ids"])):
                od = state["output_dict_per_obj"][obj_idx]
                out = od["cond_frame_outputs"].get(t)
                if out is not None:
                    pred = out["pred_masks"]
                else:
                    out, pred = m._run_single_frame_inference(
                        inference_state=state, output_dict=od, frame_idx=t, batch_size=1,
                        is_init_cond_frame=False, point_inputs=None, mask_inputs=None, reverse=reverse,
                        run_mem_encoder=True,
                    )
                    od["non_cond_frame_outputs"][t] = out
                low_res.append(pred)
                logits.append(out["object_score_logits"])
            masks_t = F.interpolate(torch.cat(low_res, 0).float(), size=(h, w), mode="bilinear",
                                    align_corners=False)
            masks_np = (masks_t[:, 0] > 0.0).cpu().numpy()
            scores_np = torch.sigmoid(torch.cat(logits, 0).float().reshape(-1)).cpu().numpy()
        ids = state["obj_ids"]
        return t, {oid: masks_np[i] for i, oid in enumerate(ids)}, {oid: float(scores_np[i]) for i, oid in enumerate(ids)}

    def propagate(
        self,
        n_frames: int,
        get_frame: Callable[[int], np.ndarray],
        seeds: Mapping[int, Sequence[SeedItem]],
        start: int,
        reverse: bool = False,
        end: int | None = None,
    ) -> Iterator[PropagateOutput]:
        """Tracks the seeded objects from ``start`` to ``end`` (inclusive) in constant memory.

        Args:
            n_frames: length of the sequence.
            get_frame: loads frame ``i`` as uint8 ``(H, W, 3)`` RGB (frames may differ in size).
            seeds: frame index -> ObjectPrompts or ``(object_id, bool mask (H, W))`` pairs.
            start: first frame to output.
            reverse: go towards frame 0.
            end: last frame to output (default: the last frame in that direction).

        Yields:
            ``(frame_index, {object_id: bool mask (H, W)}, {object_id: object presence probability})``
            for every frame in order, the seeded frames included (their masks are the prompt's own
            output). A frame where the model sees no object yields an empty mask and a low score.

        Raises:
            PromptError: no seeds, a seed outside the sequence, or ``start``/``end`` out of range.
        """
        if n_frames < 1:
            raise InputError("The sequence is empty.")
        if not seeds or not any(len(v) for v in seeds.values()):
            raise PromptError("Propagation needs at least one prompt (a click, a box or a mask) on one slice.")
        last = 0 if reverse else n_frames - 1
        end = last if end is None else end
        if not (0 <= start < n_frames and 0 <= end < n_frames):
            raise PromptError(f"start={start}, end={end} must be slices of the sequence (0..{n_frames - 1}).")
        if (end < start and not reverse) or (end > start and reverse):
            raise PromptError(f"end={end} lies behind start={start} for reverse={reverse}.")
        return self._propagate(n_frames, get_frame, seeds, start, reverse, end)

    def _propagate(self, n_frames: int, get_frame: Callable[[int], np.ndarray],
                   seeds: Mapping[int, Sequence[SeedItem]], start: int, reverse: bool,
                   end: int) -> Iterator[PropagateOutput]:
        frames = _LazyFrames(n_frames, get_frame, self.image_size, self.device)
        state = _new_state(frames, self.device)
        self._add_seeds(state, seeds)
        with self._torch.inference_mode(), self._autocast():
            self.model.propagate_in_video_preflight(state)
        windows = self._windows(n_frames)
        step = -1 if reverse else 1
        for t in range(start, end + step, step):
            result = self._step(state, t, reverse)
            self._prune(state, t, reverse, windows)
            yield result

    def propagate_with_seed_frame(
        self,
        seed_frame: np.ndarray,
        seed_prompts: Sequence[SeedItem],
        n_frames: int,
        get_frame: Callable[[int], np.ndarray],
        *,
        end: int | None = None,
    ) -> Iterator[PropagateOutput]:
        """The seed paper's "fake seed": the prompted frame of another volume goes first, then this volume.

        Args:
            seed_frame: uint8 ``(h, w, 3)`` frame that carries the prompt (any size).
            seed_prompts: ObjectPrompts or ``(object_id, mask (h, w))`` pairs on ``seed_frame``.
            n_frames: number of frames of the volume.
            get_frame: loads the volume's frame ``i`` (0-based).
            end: last volume frame to output (default: the last).

        Yields:
            ``(i, masks, scores)`` for the volume's frames ``i = 0 .. end`` only (the seed frame
            is dropped and indices are the volume's own).
        """
        seed = check_frame(seed_frame)
        if not seed_prompts:
            raise PromptError("The seed frame needs a prompt.")

        def frame(i: int) -> np.ndarray:
            return seed if i == 0 else get_frame(i - 1)

        last = n_frames if end is None else end + 1
        return self._drop_seed(self.propagate(n_frames + 1, frame, {0: list(seed_prompts)}, start=0, end=last))

    @staticmethod
    def _drop_seed(it: Iterator[PropagateOutput]) -> Iterator[PropagateOutput]:
        for t, masks, scores in it:
            if t > 0:
                yield t - 1, masks, scores


def build_sam2_backend(
    name: str = "sam2.1_hiera_t",
    checkpoint: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    device: str | None = None,
    *,
    allow_download: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    medical: bool = False,
    title: str = "",
) -> Sam2Backend:
    """Builds a SAM 2 backend with official weights, or a custom checkpoint with its config.

    Args:
        name: a key of :data:`SAM2_MODELS`, or any name for a custom checkpoint (then give ``config``).
        checkpoint: checkpoint path; None resolves the official one for ``name``.
        config: config name or ``.yaml`` path; None uses the official config for ``name``.
        device: torch device; None picks CUDA when available.
        allow_download, progress: passed to :func:`.weights.resolve_checkpoint`.
        medical: mark the backend as trained on medical images (e.g. MedSAM2).
        title: UI title.

    Raises:
        ModelUnavailableError: sam2 is missing, or an unknown name without a config.
        WeightsError: missing/corrupt checkpoint or one that does not fit the config.
    """
    if config is None:
        if name not in SAM2_MODELS:
            raise ModelUnavailableError(
                f"Unknown SAM 2 model {name!r}: choose one of {', '.join(SAM2_MODELS)}, or give checkpoint= "
                f"and config= for a custom one (e.g. MedSAM2)."
            )
        config = SAM2_MODELS[name][0]
    if checkpoint is None and name not in SAM2_MODELS:
        raise WeightsError(f"No official checkpoint for {name!r}; give checkpoint=PATH.")
    path = resolve_checkpoint(checkpoint if checkpoint is not None else name, allow_download=allow_download,
                              progress=progress)
    dev = resolve_device(device)
    model = build_sam2_model(config, path, device=dev)
    logger.info("loaded %s from %s (config %s)", name, path, config)
    return Sam2Backend(model, name=name, device=dev, title=title, medical=medical)


def sam2_info(name: str) -> BackendInfo:
    """Static description of a SAM 2 model (no torch import); ``device`` is ``"auto"`` until built."""
    return BackendInfo(name=name, title=SAM2_MODELS[name][1], points=True, boxes=True, input_size=1024,
                       medical=False, sequence=True, device="auto")


def sam2_availability(name: str) -> str | None:
    """Why ``name`` cannot run here, or None when it can (weights may still download on first use)."""
    for mod, pkg in (("torch", "PyTorch"), ("sam2", "sam2==1.1.0"), ("hydra", "hydra-core"), ("iopath", "iopath")):
        if importlib.util.find_spec(mod) is None:
            return f"{pkg} is not installed"
    return _weights_available(name)


def register_all(register: Callable[..., Any]) -> None:
    """Registers the SAM 2 / 2.1 models: ``register(name, builder, info, check)`` for each."""
    for name in SAM2_MODELS:
        register(
            name,
            lambda _n=name, **kw: build_sam2_backend(_n, **kw),
            sam2_info(name),
            lambda _n=name: sam2_availability(_n),
        )
