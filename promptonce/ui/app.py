"""The Gradio page: layout and event wiring. The logic lives in :mod:`promptonce.ui.handlers`.

Serving model
-------------
* Each browser tab is a session (``request.session_hash``) with a private folder and workspace in a
  :class:`~promptonce.ui.session.SessionStore`; ``gr.State`` is not used at all: the page sends the
  case, slice and window it shows with every event, and the server keeps the data.
* Model work (click previews, runs, corrections) shares one queue slot (``concurrency_id="model"``,
  limit ``PROMPTONCE_MODEL_CONCURRENCY``, default 1); display events (slider, window, case) run
  beside it. Models are loaded once per process by the backend registry.
* Uploads are limited by ``max_file_size`` (``PROMPTONCE_MAX_FILE_MB``, default 512) and by a
  per-session quota (``PROMPTONCE_SESSION_MB``, default 2048) that also bounds what zips expand to;
  every image read is limited to ``PROMPTONCE_MAX_VOXELS`` voxels (default 512 x 512 x 1000);
  sessions end on page unload or after ``PROMPTONCE_SESSION_TTL_S`` idle seconds (default 3600), and
  their folder is deleted. The store's sweeper also removes the empty temp files Gradio's ``File``
  component leaves in the upload folder (one per upload).
* Errors the user can act on are shown with their message (server paths reduced to file names);
  anything else shows a generic message and is logged.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from ..errors import PromptOnceError
from . import handlers as H
from . import fileguard, startup
from .session import Session, SessionStore, default_roots

__all__ = ["build_app", "launch", "launch_kwargs", "default_store", "upload_file"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
FILE_TYPES = [
    ".nii", ".gz", ".dcm", ".ima", ".zip", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy", ".npz",
]  # fmt: skip
WINDOW_CHOICES = ["auto", "lung", "mediastinum", "abdomen", "liver", "bone", "brain", "custom"]

INTRO = """
<div class="po-title"><h1>PromptOnce</h1>
<p>Segment a whole CT/MR volume, an X-ray set or a whole dataset from <b>one</b> click or box.
1&nbsp;Load images (or an example) · 2&nbsp;click on the object · 3&nbsp;Run · correct any slice · download.</p></div>
"""
KEYS_HELP = (
    "Keys (outside text boxes): ← / → previous / next slice (or image), "
    "<kbd>p</kbd> object click, <kbd>n</kbd> background click, <kbd>b</kbd> box, <kbd>u</kbd> undo."
)


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        log.warning("ignoring %s=%r (not a number)", name, os.environ.get(name))
        return default


def upload_file(**kwargs: Any) -> gr.File:
    """A ``gr.File(type="filepath")`` that leaves no stray temp file behind.

    Gradio 6.31's ``File.preprocess`` (``gradio/components/file.py``) creates an empty
    ``NamedTemporaryFile(delete=False)`` in the upload folder for every uploaded file, and neither
    uses nor removes it. This component's ``_process_single_file`` returns the uploaded path with
    the same file-type check and makes no such file. (It is replaced on the instance: a subclass
    would make Gradio write a ``.pyi`` stub beside this module.) The session store's sweeper removes
    any such files other components leave (:func:`~promptonce.ui.session.remove_empty_upload_temps`).

    Args:
        kwargs: ``gr.File`` arguments (``type`` is ``"filepath"``).
    """
    from gradio.utils import NamedString
    from gradio_client.utils import is_valid_file

    comp = gr.File(type="filepath", **kwargs)

    def process_single_file(f: Any) -> Any:
        if comp.file_types and not is_valid_file(f.path, comp.file_types):
            raise gr.Error(
                f"Invalid file type. Please upload a file that is one of these formats: {comp.file_types}",
                print_exception=False,
            )
        return NamedString(f.path)

    if callable(getattr(comp, "_process_single_file", None)):  # the Gradio method this replaces
        comp._process_single_file = process_single_file  # type: ignore[method-assign]  # noqa: SLF001
    return comp


def default_store() -> SessionStore:
    """The session store for this process: private folders outside Gradio's upload folder (never served),
    results folders inside it (served from there, no copy in Gradio's cache); see :func:`default_roots`."""
    from gradio.utils import get_upload_folder

    root, results = default_roots(get_upload_folder(), os.environ.get("PROMPTONCE_SESSION_ROOT"))
    return SessionStore(
        root,
        results_root=results,
        ttl_s=_env_float("PROMPTONCE_SESSION_TTL_S", 3600.0),
        max_session_bytes=int(_env_float("PROMPTONCE_SESSION_MB", 2048.0) * 2**20),
        max_sessions=int(_env_float("PROMPTONCE_MAX_SESSIONS", 64)),
        upload_folder=get_upload_folder(),
    )


# ---------------------------------------------------------------------------------------------- glue
def _window(name: str | None, width: float | None, level: float | None) -> Any:
    if name == "custom":
        if width is None or level is None or not width or width <= 0:
            raise gr.Error("Give the custom window a width > 0 and a level.", print_exception=False)
        return (float(width), float(level))
    return name or "auto"


def _guard(store: SessionStore) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turns PromptOnce errors into gr.Error (readable, no server paths) and hides all other errors."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        def convert(exc: BaseException, request: gr.Request | None) -> gr.Error:
            sess = store._sessions.get(request.session_hash) if request is not None else None  # noqa: SLF001
            if isinstance(exc, PromptOnceError):
                return gr.Error(html.escape(H.user_message(exc, sess)), print_exception=False)
            log.exception("handler %s failed", fn.__name__)
            return gr.Error(H.user_message(exc, sess), print_exception=False)

        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                request = kwargs.get("request")
                try:
                    yield from fn(*args, **kwargs)
                except gr.Error:
                    raise
                except Exception as exc:  # noqa: BLE001 - converted for the page
                    raise convert(exc, request) from None

            return gen_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            request = kwargs.get("request")
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:  # noqa: BLE001 - converted for the page
                raise convert(exc, request) from None

        return wrapper

    return deco


def _objects_html(ws: H.Workspace | None) -> str:
    from ..preprocess import label_color

    if ws is None:
        return ""
    items = []
    for o in ws.objects:
        r, g, b = label_color(o.object_id)
        active = " po-active" if o.object_id == ws.active else ""
        items.append(
            f'<span class="po-obj{active}"><span class="po-swatch" style="background:rgb({r},{g},{b})"></span>'
            f"{o.object_id}. {html.escape(o.name)}</span>"
        )
    return '<div class="po-legend">' + "".join(items) + "</div>"


def _object_choices(ws: H.Workspace | None) -> list[tuple[str, int]]:
    if ws is None:
        return [("object 1", 1)]
    return [(f"{o.object_id}. {o.name}", o.object_id) for o in ws.objects]


# ---------------------------------------------------------------------------------------------- app
def build_app(store: SessionStore | None = None, show_fake: bool | None = None) -> gr.Blocks:
    """Builds the page.

    Args:
        store: the session store (default: :func:`default_store`, swept in the background).
        show_fake: offer the ``fake`` test model (default: env ``PROMPTONCE_SHOW_FAKE=1``).

    Returns:
        The Blocks, not launched; ``demo.promptonce_store`` holds the store.
    """
    store = default_store() if store is None else store
    if store.upload_folder is None:
        from gradio.utils import get_upload_folder

        store.upload_folder = Path(get_upload_folder())  # where gr.File leaves its empty temp files
    store.start_sweeper()
    fileguard.register(store)  # its uploads and private folders are never served, its results are
    if show_fake is None:
        show_fake = os.environ.get("PROMPTONCE_SHOW_FAKE", "") == "1"
    choices, missing = H.model_choices(show_fake=show_fake)
    model_note = (
        "" if choices else "**No model is available on this host**; see below why. "
    ) + (f"{len(missing)} more model(s) are not available here." if missing else "All models are available.")
    missing_md = "\n".join(f"- **{html.escape(t)}**: {html.escape(w)}" for t, w in missing)
    default_model = choices[0][1] if choices else None
    model_limit = int(_env_float("PROMPTONCE_MODEL_CONCURRENCY", 1))
    guard = _guard(store)

    def sess_of(request: gr.Request) -> Session:
        return store.get(request.session_hash)

    analytics = os.environ.get("GRADIO_ANALYTICS_ENABLED", "False").lower() in ("1", "true", "yes")
    # Gradio's own copies (uploads never loaded, cached files) go after the session TTL, and all at shutdown
    ttl = int(store.ttl_s)
    cache_policy = (max(60, min(900, ttl // 2)), max(60, ttl))
    with gr.Blocks(
        title="PromptOnce", fill_width=True, analytics_enabled=analytics, delete_cache=cache_policy
    ) as demo:
        gr.HTML(INTRO)
        startup.banner()  # the models' warm-up on a Space (nothing elsewhere)
        with gr.Row(equal_height=False):
            # ------------------------------------------------------------ left: controls
            with gr.Column(scale=4, min_width=340, elem_id="po-controls"):
                with gr.Group():
                    gr.Markdown("### 1 · Load", elem_classes="po-step")
                    files = upload_file(
                        label="Images or volumes (NIfTI, DICOM files or zip, PNG/JPG, NPY)",
                        file_count="multiple", file_types=FILE_TYPES, height=150, elem_id="po-files",
                    )  # fmt: skip
                    refs = upload_file(
                        label="Reference masks (optional, same file names)",
                        file_count="multiple", file_types=FILE_TYPES, height=130, elem_id="po-refs",
                    )  # fmt: skip
                    with gr.Accordion("Loading options", open=False):
                        images_as = gr.Radio(
                            [("Decide from the files", "auto"), ("Separate images (X-ray set)", "set"),
                             ("Slices of one volume", "stack")],
                            value="auto", label="Several 2D images are", elem_id="po-images-as",
                        )  # fmt: skip
                    load_btn = gr.Button("Load files", variant="primary", elem_id="po-load")
                    with gr.Row():
                        ex_ct = gr.Button("Example: CT phantom", size="sm", elem_id="po-ex-ct")
                        ex_xr = gr.Button("Example: 4 X-rays", size="sm", elem_id="po-ex-xray")
                with gr.Group():
                    gr.Markdown("### 2 · Prompt", elem_classes="po-step")
                    mode = gr.Radio(
                        [("Object click", "positive"), ("Background click", "negative"), ("Box: 2 corners", "box")],
                        value="positive", label="A click on the image adds", elem_id="po-mode",
                    )  # fmt: skip
                    with gr.Row(equal_height=True):
                        obj_dd = gr.Dropdown(
                            choices=_object_choices(None), value=1, label="Active object", scale=2,
                            elem_id="po-object", allow_custom_value=True,
                        )  # fmt: skip
                        obj_name = gr.Textbox(label="New object", placeholder="e.g. left lung", scale=2)
                        add_obj = gr.Button("Add", size="sm", scale=1, elem_id="po-add-object")
                    legend = gr.HTML(elem_id="po-legend")
                    with gr.Row():
                        undo_btn = gr.Button("Undo last", size="sm", elem_id="po-undo")
                        reset_btn = gr.Button("Reset all", size="sm", variant="secondary", elem_id="po-reset")
                with gr.Group():
                    gr.Markdown("### 3 · Run", elem_classes="po-step")
                    model = gr.Dropdown(
                        choices=choices, value=default_model, label="Model", elem_id="po-model",
                        interactive=bool(choices),
                    )  # fmt: skip
                    gr.Markdown(model_note, elem_classes="po-note", elem_id="po-model-note")
                    if missing:
                        with gr.Accordion("Why some models are missing", open=False):
                            gr.Markdown(missing_md, elem_classes="po-note")
                    scope = gr.Radio(
                        [("This image", "image"), ("This volume", "volume"), ("Whole dataset", "dataset")],
                        value="volume", label="Segment", elem_id="po-scope",
                    )  # fmt: skip
                    with gr.Accordion("Advanced", open=False):
                        strategy = gr.Radio(
                            [("Seed transfer (cases independent)", "transfer"), ("Chain (case to case)", "chain")],
                            value="transfer", label="Dataset strategy", elem_id="po-strategy",
                        )  # fmt: skip
                    with gr.Row():
                        run_btn = gr.Button("Run", variant="primary", elem_id="po-run")
                        stop_btn = gr.Button("Stop", variant="stop", elem_id="po-stop")
                    correct_btn = gr.Button("Apply corrections (re-propagate)", size="sm", elem_id="po-correct")
                    status = gr.Markdown("Load images to start.", elem_id="po-status")
            # ------------------------------------------------------------ right: the image
            with gr.Column(scale=7, min_width=420):
                with gr.Row(equal_height=True):
                    case_dd = gr.Dropdown(
                        choices=[], label="Case", scale=3, elem_id="po-case", allow_custom_value=True
                    )  # fmt: skip
                    window_dd = gr.Dropdown(WINDOW_CHOICES, value="auto", label="Window", scale=2, elem_id="po-window")
                    win_w = gr.Number(value=400, label="Width", visible=False, scale=1, elem_id="po-ww")
                    win_l = gr.Number(value=40, label="Level", visible=False, scale=1, elem_id="po-wl")
                view = gr.Image(
                    label="Click on the object", interactive=False, type="filepath", height=600,
                    buttons=["fullscreen", "download"], elem_id="po-view", show_label=True,
                    placeholder="Load images or pick an example on the left.",
                )  # fmt: skip
                with gr.Row(equal_height=True):
                    prev_btn = gr.Button("◀", size="sm", scale=0, min_width=48, elem_id="po-prev")
                    slider = gr.Slider(1, 2, value=1, step=1, label="Slice", scale=8, elem_id="po-slider")
                    next_btn = gr.Button("▶", size="sm", scale=0, min_width=48, elem_id="po-next")
                info = gr.Markdown(elem_id="po-info")
                with gr.Row(equal_height=True):
                    flagged = gr.Dropdown(
                        choices=[], label="Flagged slices (go to)", scale=3, elem_id="po-flagged",
                        allow_custom_value=True,
                    )  # fmt: skip
                    show_ref = gr.Checkbox(False, label="Show reference outline", scale=1, elem_id="po-show-ref")
                    ref_labels = gr.Textbox(
                        label="Reference labels scored", placeholder="all; e.g. 1,2", scale=1, elem_id="po-ref-labels",
                    )  # fmt: skip
                gr.Markdown(KEYS_HELP, elem_classes="po-note")
        with gr.Accordion("Results: metrics and downloads", open=True, elem_id="po-results"):
            metrics_md = gr.Markdown("No result yet.", elem_id="po-metrics")
            with gr.Row():
                table = gr.Dataframe(
                    headers=["case", "slices", "dice", "jaccard", "flags"], label="Per case", interactive=False,
                    elem_id="po-table", scale=1,
                )  # fmt: skip
                plot = gr.LinePlot(
                    x="slice", y="dice", color="case", label="Dice per slice", elem_id="po-plot",
                    y_lim=[0, 1], scale=1, height=260,
                )  # fmt: skip
            downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="po-downloads")

        view_outputs = [view, slider, case_dd, info, flagged, window_dd, win_w, win_l]
        object_outputs = [obj_dd, legend]
        result_outputs = [metrics_md, table, plot, downloads]

        # -------------------------------------------------------------------- helpers
        def view_updates(
            sess: Session, v: int | None, k1: int | None, window: Any, show: bool, reset_view: bool = False
        ) -> dict[Any, Any]:
            ws = sess.workspace
            if ws is None:
                return {view: None, info: "", case_dd: gr.update(choices=[], value=None)}
            v = 0 if v is None else int(v)
            v = min(max(v, 0), ws.n_volumes - 1)
            n = ws.metas[v].n_slices
            k = (n // 2 if reset_view else (int(k1) - 1 if k1 else 0))
            k = min(max(k, 0), n - 1)
            rgb = H.render(ws, v, k, window, show)
            path = H.save_view(sess, rgb)
            H.warm_view(ws, v, k, window)  # encode the shown slice now, so that a click on it is quick
            upd: dict[Any, Any] = {
                view: str(path),
                slider: gr.update(minimum=1, maximum=max(n, 2), value=k + 1, visible=n > 1,
                                  interactive=n > 1, label=f"Slice (1–{n})"),
                info: H.slice_info(ws, v, k),
            }  # fmt: skip
            if reset_view:
                upd[case_dd] = gr.update(
                    choices=[(f"{i + 1}. {m.name}", i) for i, m in enumerate(ws.metas)], value=v,
                    interactive=ws.n_volumes > 1,
                )  # fmt: skip
                is_ct = any(m.modality == "CT" for m in ws.metas)
                upd[window_dd] = gr.update(visible=is_ct)
            upd[flagged] = gr.update(
                choices=[(f"{ws.metas[fv].name} · slice {fk + 1}: {txt}"[:120], f"{fv}:{fk}")
                         for fv, fk, txt in ws.flagged()[:300]], value=None,
            )  # fmt: skip
            return upd

        def result_updates(sess: Session, window: Any) -> dict[Any, Any]:
            import pandas as pd

            ws = sess.workspace
            if ws is None or not ws.has_results():
                return {metrics_md: "No result yet.", table: None, downloads: None, plot: None}
            summary = H.results_summary(ws)
            files_out = H.write_downloads(ws, summary, window)
            rows = [
                [c["case"], c["slices"], _fmt(c["dice"]), _fmt(c["jaccard"]), c["flags"]] for c in summary["cases"]
            ]
            per = summary["per_slice"]
            df = pd.DataFrame(per) if per else None
            x_title = "slice"
            if per and len({p["case"] for p in per}) == len(per):
                # one slice per case (an X-ray set): Dice per image, images named on the x axis
                df = pd.DataFrame([{"slice": p["case"], "dice": p["dice"], "case": "images"} for p in per])
                x_title = "image"
            return {
                metrics_md: H.summary_markdown(summary),
                table: pd.DataFrame(rows, columns=["case", "slices", "dice", "jaccard", "flags"]),
                plot: gr.update(value=df, x_title=x_title),
                downloads: [str(p) for p in files_out] or None,
            }

        def objects_updates(sess: Session) -> dict[Any, Any]:
            ws = sess.workspace
            return {
                obj_dd: gr.update(choices=_object_choices(ws), value=ws.active if ws else 1),
                legend: _objects_html(ws),
            }

        def notes(ws: H.Workspace | None) -> None:
            if ws is not None and ws.notes:
                for n in ws.notes:
                    gr.Warning(html.escape(n))
                ws.notes.clear()

        # -------------------------------------------------------------------- loading
        def _after_load(sess: Session, window: Any, show: bool) -> dict[Any, Any]:
            ws = sess.workspace
            upd = view_updates(sess, 0, None, window, show, reset_view=True)
            upd.update(objects_updates(sess))
            upd.update(result_updates(sess, window))
            n_ref = sum(r is not None for r in ws.references)
            kinds = sorted({m.source_format for m in ws.metas})
            upd[status] = (
                f"Loaded **{ws.n_volumes} case(s)** ({', '.join(kinds)}; "
                f"{sum(m.n_slices for m in ws.metas)} image(s)/slice(s)"
                + (f", {n_ref} with a reference" if n_ref else "")
                + "). Click on the object in the image."
            )
            upd[files] = None
            upd[refs] = None
            # an image set is segmented as a whole by default; a volume slice by slice
            image_set = ws.n_volumes > 1 and all(m.n_slices == 1 for m in ws.metas)
            upd[scope] = "dataset" if image_set else "volume"
            upd[ref_labels] = ""
            notes(ws)
            return upd

        load_outputs = [*view_outputs, *object_outputs, *result_outputs, status, files, refs, scope, ref_labels]

        @guard
        def on_load(fs, rs, as_, wname, ww, wl, show, request: gr.Request):
            sess = sess_of(request)
            if sess.running.is_set():
                raise gr.Error("A run is in progress; stop it before loading new files.", print_exception=False)
            paths = [f if isinstance(f, str) else getattr(f, "name", f) for f in (fs or [])]
            rpaths = [f if isinstance(f, str) else getattr(f, "name", f) for f in (rs or [])]
            try:
                H.load_inputs(sess, paths, rpaths, images_as=as_ or "auto", remove_sources=_all_uploads(paths + rpaths))
            finally:
                store.sweep_upload_temps()  # Gradio's empty temp files of earlier uploads
            return _after_load(sess, _window(wname, ww, wl), show)

        def make_example(name: str) -> Callable[..., Any]:
            @guard
            def on_example(wname, ww, wl, show, request: gr.Request):
                sess = sess_of(request)
                if sess.running.is_set():
                    raise gr.Error("A run is in progress; stop it before loading an example.", print_exception=False)
                H.load_example(sess, name)
                return _after_load(sess, "auto" if wname == "custom" else wname, show)

            on_example.__name__ = f"on_example_{name}"
            return on_example

        load_btn.click(
            on_load, [files, refs, images_as, window_dd, win_w, win_l, show_ref], load_outputs, api_name="load",
            concurrency_limit=4, concurrency_id="load",
        )  # fmt: skip
        for btn, name in ((ex_ct, "ct"), (ex_xr, "xray")):
            btn.click(
                make_example(name), [window_dd, win_w, win_l, show_ref], load_outputs, api_name=f"example_{name}",
                concurrency_limit=4, concurrency_id="load",
            )  # fmt: skip

        # -------------------------------------------------------------------- navigation
        def nav_handler(kind: str) -> Callable[..., Any]:
            @guard
            def on_nav(v, k1, wname, ww, wl, show, request: gr.Request):
                sess = sess_of(request)
                ws = H.workspace(sess)
                v = 0 if v is None else int(v)
                k1 = int(k1 or 1)
                reset = False
                if kind in ("prev", "next"):
                    step = -1 if kind == "prev" else 1
                    if ws.metas[v].n_slices > 1:
                        k1 = min(max(k1 + step, 1), ws.metas[v].n_slices)
                    else:
                        v = min(max(v + step, 0), ws.n_volumes - 1)
                        k1 = 1
                        reset = True
                elif kind == "case":
                    k1 = ws.metas[v].n_slices // 2 + 1
                upd = view_updates(sess, v, k1, _window(wname, ww, wl), show)
                if reset:
                    upd[case_dd] = gr.update(value=v)
                return upd

            on_nav.__name__ = f"on_{kind}"
            return on_nav

        nav_inputs = [case_dd, slider, window_dd, win_w, win_l, show_ref]
        nav_kw = dict(concurrency_limit=8, concurrency_id="view", show_progress="hidden")
        slider.release(nav_handler("slider"), nav_inputs, view_outputs, api_name="show_slice", **nav_kw)
        slider.input(nav_handler("slider"), nav_inputs, view_outputs, trigger_mode="always_last",
                     api_visibility="private", **nav_kw)  # fmt: skip
        prev_btn.click(nav_handler("prev"), nav_inputs, view_outputs, api_name="prev", **nav_kw)
        next_btn.click(nav_handler("next"), nav_inputs, view_outputs, api_name="next", **nav_kw)
        case_dd.input(nav_handler("case"), nav_inputs, view_outputs, api_name="show_case", **nav_kw)
        show_ref.input(nav_handler("slider"), nav_inputs, view_outputs, api_visibility="private", **nav_kw)

        def on_window(wname, *rest):
            custom = wname == "custom"
            return gr.update(visible=custom), gr.update(visible=custom)

        window_dd.input(on_window, [window_dd], [win_w, win_l], queue=False, api_visibility="private").then(
            nav_handler("slider"), nav_inputs, view_outputs, api_visibility="private", **nav_kw
        )
        for num in (win_w, win_l):
            num.submit(nav_handler("slider"), nav_inputs, view_outputs, api_visibility="private", **nav_kw)

        @guard
        def on_flagged(choice, wname, ww, wl, show, request: gr.Request):
            sess = sess_of(request)
            H.workspace(sess)
            if not choice:
                return {}
            v, k = (int(x) for x in str(choice).split(":"))
            upd = view_updates(sess, v, k + 1, _window(wname, ww, wl), show)
            upd[case_dd] = gr.update(value=v)
            return upd

        @guard
        def on_ref_labels(text, v, k1, wname, ww, wl, show, request: gr.Request):
            sess = sess_of(request)
            ws = H.workspace(sess)
            before = ws.ref_labels
            if H.set_reference_labels(ws, text) == before:
                return {}
            window = _window(wname, ww, wl)
            upd = view_updates(sess, v, k1, window, show)
            upd = {c: u for c, u in upd.items() if c in (view, info)}  # leave the position as it is now
            upd.update(result_updates(sess, window))
            return upd

        ref_outputs = [view, info, *result_outputs]
        ref_labels.submit(on_ref_labels, [ref_labels, *nav_inputs], ref_outputs, api_name="reference_labels",
                          **nav_kw)  # fmt: skip
        ref_labels.blur(on_ref_labels, [ref_labels, *nav_inputs], ref_outputs, api_visibility="private",
                        **nav_kw)  # fmt: skip

        flagged.input(on_flagged, [flagged, window_dd, win_w, win_l, show_ref], view_outputs,
                      api_visibility="private", **nav_kw)  # fmt: skip

        # -------------------------------------------------------------------- prompting
        def _do_click(sess: Session, v, k1, x, y, md, mdl, window, show):
            ws = H.workspace(sess)
            if sess.running.is_set():
                raise gr.Error("A run is in progress; wait for it or press Stop before clicking.", print_exception=False)
            if not mdl:
                raise gr.Error("No model is available on this server.", print_exception=False)
            v = int(v or 0)
            k = int(k1 or 1) - 1
            with sess.lock:
                msg = H.click(ws, v, k, x, y, md, mdl, window)
            upd = view_updates(sess, v, k + 1, window, show)
            upd[status] = msg
            notes(ws)
            return upd

        @guard
        def on_select(v, k1, md, mdl, wname, ww, wl, show, evt: gr.SelectData, request: gr.Request):
            if evt is None or evt.index is None:
                return {}
            x, y = evt.index[0], evt.index[1]
            return _do_click(sess_of(request), v, k1, x, y, md, mdl, _window(wname, ww, wl), show)

        @guard
        def on_click_at(v, k1, x, y, md, mdl, wname, ww, wl, show, request: gr.Request):
            """API: a click at display pixel (x, y) of the shown case/slice (what a click on the image does)."""
            return _do_click(sess_of(request), v, k1, float(x), float(y), md, mdl, _window(wname, ww, wl), show)

        click_inputs = [case_dd, slider, mode, model, window_dd, win_w, win_l, show_ref]
        model_kw = dict(concurrency_limit=model_limit, concurrency_id="model")
        view.select(on_select, click_inputs, [*view_outputs, status], api_visibility="private",
                    show_progress="minimal", **model_kw)  # fmt: skip
        # the same as a click on the image, for API clients: x and y are hidden numbers
        api_x = gr.Number(visible=False)
        api_y = gr.Number(visible=False)
        api_btn = gr.Button(visible=False, elem_id="po-api-click")
        api_btn.click(
            on_click_at, [case_dd, slider, api_x, api_y, mode, model, window_dd, win_w, win_l, show_ref],
            [*view_outputs, status], api_name="click_at", **model_kw,
        )  # fmt: skip

        @guard
        def on_add_object(name, request: gr.Request):
            sess = sess_of(request)
            ws = H.workspace(sess)
            with sess.lock:
                oid = H.add_object(ws, name)
            upd = objects_updates(sess)
            upd[obj_name] = ""
            upd[status] = f"Added **{html.escape(ws.object(oid).name)}**: click on it in the image."
            return upd

        add_obj.click(on_add_object, [obj_name], [*object_outputs, obj_name, status], api_name="add_object",
                      concurrency_limit=8, concurrency_id="view")  # fmt: skip
        obj_name.submit(on_add_object, [obj_name], [*object_outputs, obj_name, status], api_visibility="private",
                        concurrency_limit=8, concurrency_id="view")  # fmt: skip

        @guard
        def on_object(oid, request: gr.Request):
            sess = sess_of(request)
            ws = H.workspace(sess)
            if oid is not None:
                H.set_active(ws, int(oid))
            return objects_updates(sess)

        obj_dd.input(on_object, [obj_dd], object_outputs, api_name="set_object",
                     concurrency_limit=8, concurrency_id="view")  # fmt: skip

        @guard
        def on_undo(v, k1, mdl, wname, ww, wl, show, request: gr.Request):
            sess = sess_of(request)
            ws = H.workspace(sess)
            if sess.running.is_set():
                raise gr.Error("A run is in progress; wait for it or press Stop first.", print_exception=False)
            window = _window(wname, ww, wl)
            with sess.lock:
                key = H.undo(ws, mdl or "auto", window)
            if key is None:
                upd = view_updates(sess, v, k1, window, show)
                upd[status] = "Nothing to undo."
                return upd
            upd = view_updates(sess, key[0], key[1] + 1, window, show)
            upd[case_dd] = gr.update(value=key[0])
            upd[status] = f"Undone on {ws.metas[key[0]].name}, slice {key[1] + 1}."
            return upd

        undo_btn.click(on_undo, [case_dd, slider, model, window_dd, win_w, win_l, show_ref],
                       [*view_outputs, status], api_name="undo", **model_kw)  # fmt: skip

        @guard
        def on_reset(v, k1, wname, ww, wl, show, request: gr.Request):
            sess = sess_of(request)
            ws = H.workspace(sess)
            if sess.running.is_set():
                raise gr.Error("A run is in progress; wait for it or press Stop first.", print_exception=False)
            window = _window(wname, ww, wl)
            with sess.lock:
                H.reset_prompts(ws)
            upd = view_updates(sess, v, k1, window, show)
            upd.update(result_updates(sess, window))
            upd[status] = "All prompts and results removed."
            return upd

        reset_btn.click(on_reset, [case_dd, slider, window_dd, win_w, win_l, show_ref],
                        [*view_outputs, *result_outputs, status], api_name="reset",
                        concurrency_limit=8, concurrency_id="view")  # fmt: skip

        # -------------------------------------------------------------------- running
        run_outputs = [*view_outputs, *result_outputs, status]

        def _run_loop(sess: Session, gen, v, k1, window, show, progress: gr.Progress):
            ws = H.workspace(sess)
            last = None
            for p in gen:
                last = p
                sess.touch()
                if p.finished:
                    break
                progress((p.done, p.total), desc=H.progress_text(p), unit="slices")
                upd: dict[Any, Any] = {status: H.progress_text(p)}
                if p.volume_index == (int(v) if v is not None else 0) and p.slice_index >= 0:
                    upd.update(view_updates(sess, p.volume_index, p.slice_index + 1, window, show))
                yield upd
            upd = view_updates(sess, v, k1, window, show)
            upd.update(result_updates(sess, window))
            upd[status] = H.progress_text(last) if last is not None else "Nothing was run."
            notes(ws)
            yield upd

        @guard
        def on_run(v, k1, sc, st, mdl, wname, ww, wl, show, request: gr.Request, progress=gr.Progress()):
            sess = sess_of(request)
            ws = H.workspace(sess)
            if not mdl:
                raise gr.Error("No model is available on this server.", print_exception=False)
            window = _window(wname, ww, wl)
            if sess.running.is_set():
                raise gr.Error("A run is already in progress in this tab.", print_exception=False)
            sess.cancel.clear()
            sess.running.set()
            try:
                gen = H.run(ws, sc, st, mdl, window, int(v or 0), sess.cancel)
                yield from _run_loop(sess, gen, v, k1, window, show, progress)
            finally:
                sess.running.clear()

        @guard
        def on_correct(v, k1, mdl, wname, ww, wl, show, request: gr.Request, progress=gr.Progress()):
            sess = sess_of(request)
            ws = H.workspace(sess)
            window = _window(wname, ww, wl)
            if sess.running.is_set():
                raise gr.Error("A run is already in progress in this tab.", print_exception=False)
            sess.cancel.clear()
            sess.running.set()
            try:
                gen = H.apply_corrections(ws, mdl or "auto", window, sess.cancel)
                yield from _run_loop(sess, gen, v, k1, window, show, progress)
            finally:
                sess.running.clear()

        run_ev = run_btn.click(
            on_run, [case_dd, slider, scope, strategy, model, window_dd, win_w, win_l, show_ref], run_outputs,
            api_name="run", show_progress_on=[status], **model_kw,
        )  # fmt: skip
        correct_ev = correct_btn.click(
            on_correct, [case_dd, slider, model, window_dd, win_w, win_l, show_ref], run_outputs,
            api_name="apply_corrections", show_progress_on=[status], **model_kw,
        )  # fmt: skip

        @guard
        def on_stop(v, k1, wname, ww, wl, show, request: gr.Request):
            sess = sess_of(request)
            sess.cancel.set()
            was_running = sess.running.is_set()
            # wait (briefly) for the run to notice, so what is shown is what was kept
            for _ in range(100):
                if not sess.running.is_set():
                    break
                threading.Event().wait(0.05)
            ws = sess.workspace
            if ws is None:
                return {status: "Nothing is running."}
            window = _window(wname, ww, wl)
            if ws.run_info is not None and was_running:
                ws.run_info.cancelled = True
            upd = view_updates(sess, v, k1, window, show)
            upd.update(result_updates(sess, window))
            done = int(sum(d.sum() for d in ws.done.values()))
            upd[status] = f"Stopped. {done} slice(s) segmented so far are kept." if was_running else "Nothing is running."
            return upd

        stop_btn.click(on_stop, [case_dd, slider, window_dd, win_w, win_l, show_ref], run_outputs,
                       cancels=[run_ev, correct_ev], api_name="stop", concurrency_limit=None,
                       concurrency_id="stop", queue=True)  # fmt: skip

        # -------------------------------------------------------------------- summary API + lifecycle
        @guard
        def on_summary(request: gr.Request) -> str:
            """API: the current result's figures as JSON (cases, Dice, prompts, time)."""
            sess = sess_of(request)
            ws = H.workspace(sess)
            return H.write_json_text(H.results_summary(ws))

        summary_json = gr.Textbox(visible=False)
        summary_btn = gr.Button(visible=False)
        summary_btn.click(on_summary, None, summary_json, api_name="summary", concurrency_limit=8,
                          concurrency_id="view")  # fmt: skip

        def on_unload(request: gr.Request) -> None:
            store.close(request.session_hash)

        demo.unload(on_unload)
    demo.promptonce_store = store  # type: ignore[attr-defined]
    return demo


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def _all_uploads(paths: list[Any]) -> bool:
    """True when every path lies in Gradio's upload folder (so deleting the originals is safe)."""
    from gradio.utils import get_upload_folder

    root = Path(get_upload_folder()).resolve()
    try:
        return bool(paths) and all(root in Path(p).resolve().parents for p in paths)
    except (OSError, TypeError):
        return False


def launch_kwargs() -> dict[str, Any]:
    """The ``demo.launch`` arguments: host/port from the environment, upload limit, theme, CSS and keys."""
    port = os.environ.get("PORT") or os.environ.get("GRADIO_SERVER_PORT") or "7860"
    return {
        "server_name": os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        "server_port": int(port),
        "max_file_size": f"{int(_env_float('PROMPTONCE_MAX_FILE_MB', 512))}mb",
        "show_error": False,
        # system fonts: the page makes no request outside this server (no web fonts, no analytics)
        "theme": gr.themes.Soft(
            primary_hue="indigo", neutral_hue="slate",
            font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"],
        ),
        "css_paths": [HERE / "style.css"],
        "head": "<script>" + (HERE / "keys.js").read_text(encoding="utf-8") + "</script>",
        "footer_links": ["api", "gradio"],
        "run_history": False,
        "app_kwargs": {"middleware": [fileguard.middleware()]},  # only results are served (ui/fileguard.py)
    }


def launch(**overrides: Any) -> None:
    """Builds and serves the app (blocks): ``0.0.0.0:7860`` unless ``GRADIO_SERVER_NAME`` / ``PORT`` say otherwise."""
    logging.basicConfig(level=os.environ.get("PROMPTONCE_LOG_LEVEL", "INFO"))
    # a web request must never start a multi-GB weight download: offer only models whose weights are
    # here (the embedded LiteMedSAM/MobileSAM, or checkpoints baked into the image); opt out with 0
    os.environ.setdefault("PROMPTONCE_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    startup.prepare()  # on a Space: persistent cache, ZeroGPU, models loaded at start (promptonce.ui.startup)
    demo = build_app()
    demo.queue(default_concurrency_limit=1, max_size=int(_env_float("PROMPTONCE_QUEUE_SIZE", 64)))
    kwargs = launch_kwargs()
    kwargs.update(overrides)
    try:
        demo.launch(**kwargs)
    finally:
        demo.promptonce_store.close_all()  # type: ignore[attr-defined]
