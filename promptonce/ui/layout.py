"""The page's layout: the components, made once per app and held in one :class:`Page`.

The left column holds the three steps (load, prompt, run), the right column the image with its
slice controls, and a results panel sits below. Element ids (``po-*``) are what the keyboard
script, the CSS and the browser tests address.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from . import startup

__all__ = ["FILE_TYPES", "WINDOW_CHOICES", "INTRO", "KEYS_HELP", "Page", "build_page", "upload_file"]

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
    "Keys (outside text boxes): ← / → or the mouse wheel over the image: previous / next slice (or image), "
    "<kbd>p</kbd> object click, <kbd>n</kbd> background click, <kbd>b</kbd> box, <kbd>u</kbd> undo, "
    "<kbd>r</kbd> next slice to review."
)


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


@dataclass
class Page:
    """The page's components (filled in by :func:`build_page`)."""

    files: Any = None
    refs: Any = None
    images_as: Any = None
    load_btn: Any = None
    ex_ct: Any = None
    ex_xr: Any = None
    mode: Any = None
    obj_dd: Any = None
    obj_name: Any = None
    add_obj: Any = None
    legend: Any = None
    undo_btn: Any = None
    reset_btn: Any = None
    model: Any = None
    scope: Any = None
    strategy: Any = None
    run_btn: Any = None
    stop_btn: Any = None
    correct_btn: Any = None
    status: Any = None
    case_dd: Any = None
    window_dd: Any = None
    win_w: Any = None
    win_l: Any = None
    view: Any = None
    prev_btn: Any = None
    slider: Any = None
    next_btn: Any = None
    info: Any = None
    flagged: Any = None
    show_ref: Any = None
    ref_labels: Any = None
    metrics_md: Any = None
    table: Any = None
    plot: Any = None
    downloads: Any = None
    # --- review (review mode: ranked list, reformats, display options, measures)
    review: Any = None
    review_next: Any = None
    opacity: Any = None
    mask_style: Any = None
    coronal: Any = None
    sagittal: Any = None
    measures: Any = None
    thumbs: Any = None
    reformat_col: Any = None
    # --- end review
    # --- recover: the load panel's message line and the time point of a 4D input
    load_msg: Any = None
    time_point: Any = None
    drag_box: Any = None
    drag_go: Any = None

    # ------------------------------------------------------------------ groups the events share
    @property
    def view_inputs(self) -> list[Any]:
        """The view the page shows (see :class:`~promptonce.ui.view.ViewState`): case, slice, window, outline."""
        return [self.case_dd, self.slider, self.window_dd, self.win_w, self.win_l, self.show_ref]

    @property
    def window_inputs(self) -> list[Any]:
        return [self.window_dd, self.win_w, self.win_l, self.show_ref]

    @property
    def view_outputs(self) -> list[Any]:
        return [self.view, self.slider, self.case_dd, self.info, self.flagged, self.window_dd, self.win_w, self.win_l]

    # --- review
    @property
    def review_outputs(self) -> list[Any]:
        """The review components, refreshed after every change of the shown image (list, reformats, measures,
        thumbnails); kept out of :attr:`view_outputs` so that the API's output positions stay as they were."""
        return [c for c in (self.review, self.coronal, self.sagittal, self.measures, self.thumbs,
                                       self.reformat_col) if c is not None]
    # --- end review

    @property
    def object_outputs(self) -> list[Any]:
        return [self.obj_dd, self.legend]

    @property
    def result_outputs(self) -> list[Any]:
        return [self.metrics_md, self.table, self.plot, self.downloads]


def build_page(choices: list[tuple[str, str]], missing: list[tuple[str, str]]) -> Page:
    """Lays out the page inside the current ``gr.Blocks`` and returns its components.

    Args:
        choices: the models offered, as ``(label, value)``.
        missing: the models not available here, as ``(title, why not)``.
    """
    p = Page()
    gr.HTML(INTRO)
    startup.banner()  # the models' warm-up on a Space (nothing elsewhere)
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=340, elem_id="po-controls"):
            _load_panel(p)
            _prompt_panel(p)
            _run_panel(p, choices, missing)
        with gr.Column(scale=7, min_width=420):
            _viewer(p)
    _results_panel(p)
    return p


def _load_panel(p: Page) -> None:
    with gr.Group():
        gr.Markdown("### 1 · Load", elem_classes="po-step")
        p.files = upload_file(
            label="Images or volumes (NIfTI, DICOM files or zip, PNG/JPG, NPY)",
            file_count="multiple", file_types=FILE_TYPES, height=150, elem_id="po-files",
        )  # fmt: skip
        p.refs = upload_file(
            label="Reference masks (optional, same file names)",
            file_count="multiple", file_types=FILE_TYPES, height=130, elem_id="po-refs",
        )  # fmt: skip
        with gr.Accordion("Loading options", open=False):
            p.images_as = gr.Radio(
                [("Decide from the files", "auto"), ("Separate images (X-ray set)", "set"),
                 ("Slices of one volume", "stack")],
                value="auto", label="Several 2D images are", elem_id="po-images-as",
            )  # fmt: skip
        p.load_btn = gr.Button("Load files", variant="primary", elem_id="po-load")
        # --- recover: one message where the user looks (a failed load says why here), and the
        # time point of a 4D input (hidden until one is loaded)
        p.load_msg = gr.Markdown("", elem_id="po-load-msg")
        p.time_point = gr.Slider(
            1, 2, value=1, step=1, label="Time point (4D input)", visible=False, elem_id="po-time",
        )  # fmt: skip
        # --- end recover
        with gr.Row():
            p.ex_ct = gr.Button("Example: CT phantom", size="sm", elem_id="po-ex-ct")
            p.ex_xr = gr.Button("Example: 4 X-rays", size="sm", elem_id="po-ex-xray")


def _prompt_panel(p: Page) -> None:
    with gr.Group():
        gr.Markdown("### 2 · Prompt", elem_classes="po-step")
        p.mode = gr.Radio(
            [("Object click", "positive"), ("Background click", "negative"), ("Box: 2 corners", "box")],
            value="positive", label="A click on the image adds", elem_id="po-mode",
        )  # fmt: skip
        with gr.Row(equal_height=True):
            p.obj_dd = gr.Dropdown(
                choices=[("object 1", 1)], value=1, label="Active object", scale=2,
                elem_id="po-object", allow_custom_value=True,
            )  # fmt: skip
            p.obj_name = gr.Textbox(label="New object", placeholder="e.g. left lung", scale=2)
            p.add_obj = gr.Button("Add", size="sm", scale=1, elem_id="po-add-object")
        p.legend = gr.HTML(elem_id="po-legend")
        # --- recover: a box drawn by dragging on the image (ui/events.py DRAG_JS fills these)
        p.drag_box = gr.Textbox(visible="hidden", elem_id="po-drag")
        p.drag_go = gr.Button(visible="hidden", elem_id="po-drag-go")
        # --- end recover
        with gr.Row():
            p.undo_btn = gr.Button("Undo last", size="sm", elem_id="po-undo")
            p.reset_btn = gr.Button("Reset all", size="sm", variant="secondary", elem_id="po-reset")


def _run_panel(p: Page, choices: list[tuple[str, str]], missing: list[tuple[str, str]]) -> None:
    model_note = (
        "" if choices else "**No model is available on this host**; see below why. "
    ) + (f"{len(missing)} more model(s) are not available here." if missing else "All models are available.")
    with gr.Group():
        gr.Markdown("### 3 · Run", elem_classes="po-step")
        p.model = gr.Dropdown(
            choices=choices, value=choices[0][1] if choices else None, label="Model", elem_id="po-model",
            interactive=bool(choices),
        )  # fmt: skip
        gr.Markdown(model_note, elem_classes="po-note", elem_id="po-model-note")
        if missing:
            with gr.Accordion("Why some models are missing", open=False):
                missing_md = "\n".join(f"- **{html.escape(t)}**: {html.escape(w)}" for t, w in missing)
                gr.Markdown(missing_md, elem_classes="po-note")
        p.scope = gr.Radio(
            [("This image", "image"), ("This volume", "volume"), ("Whole dataset", "dataset")],
            value="volume", label="Segment", elem_id="po-scope",
        )  # fmt: skip
        with gr.Accordion("Advanced", open=False):
            p.strategy = gr.Radio(
                [("Seed transfer (cases independent)", "transfer"), ("Chain (case to case)", "chain")],
                value="transfer", label="Dataset strategy", elem_id="po-strategy",
            )  # fmt: skip
        with gr.Row():
            p.run_btn = gr.Button("Run", variant="primary", elem_id="po-run")
            p.stop_btn = gr.Button("Stop", variant="stop", elem_id="po-stop")
        p.correct_btn = gr.Button("Apply corrections (re-propagate)", size="sm", elem_id="po-correct")
        p.status = gr.Markdown("Load images to start.", elem_id="po-status")


def _viewer(p: Page) -> None:
    with gr.Row(equal_height=True):
        p.case_dd = gr.Dropdown(choices=[], label="Case", scale=3, elem_id="po-case", allow_custom_value=True)
        p.window_dd = gr.Dropdown(WINDOW_CHOICES, value="auto", label="Window", scale=2, elem_id="po-window")
        p.win_w = gr.Number(value=400, label="Width", visible=False, scale=1, elem_id="po-ww")
        p.win_l = gr.Number(value=40, label="Level", visible=False, scale=1, elem_id="po-wl")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=360):
            p.view = gr.Image(
                label="Click on the object", interactive=False, type="filepath", height=600,
                buttons=["fullscreen", "download"], elem_id="po-view", show_label=True,
                placeholder="Load images or pick an example on the left.",
            )  # fmt: skip
        _review_views(p)  # --- review: coronal / sagittal reformats beside the image
    p.measures = gr.Markdown(elem_id="po-measures")  # --- review: mL and mm² per object
    with gr.Row(equal_height=True):
        p.prev_btn = gr.Button("◀", size="sm", scale=0, min_width=48, elem_id="po-prev")
        p.slider = gr.Slider(1, 2, value=1, step=1, label="Slice", scale=8, elem_id="po-slider")
        p.next_btn = gr.Button("▶", size="sm", scale=0, min_width=48, elem_id="po-next")
    p.info = gr.Markdown(elem_id="po-info")
    with gr.Row(equal_height=True):
        p.flagged = gr.Dropdown(
            choices=[], label="Flagged slices (go to)", scale=3, elem_id="po-flagged", allow_custom_value=True,
        )  # fmt: skip
        p.show_ref = gr.Checkbox(False, label="Show reference outline", scale=1, elem_id="po-show-ref")
        p.ref_labels = gr.Textbox(
            label="Reference labels scored", placeholder="all; e.g. 1,2", scale=1, elem_id="po-ref-labels",
        )  # fmt: skip
    gr.Markdown(KEYS_HELP, elem_classes="po-note")
    _review_panel(p)  # --- review


# --- review
def _review_views(p: Page) -> None:
    """The coronal and sagittal reformats with the mask (shown for volumes)."""
    with gr.Column(scale=1, min_width=220, elem_id="po-reformats", visible=False) as p.reformat_col:
        p.coronal = gr.Image(
            label="Coronal", interactive=False, type="filepath", height=290, elem_id="po-coronal",
            buttons=["fullscreen"], visible=False,
        )  # fmt: skip
        p.sagittal = gr.Image(
            label="Sagittal", interactive=False, type="filepath", height=290, elem_id="po-sagittal",
            buttons=["fullscreen"], visible=False,
        )  # fmt: skip


def _review_panel(p: Page) -> None:
    """The review list (lowest confidence first), the next-to-review button and the mask display options."""
    p.thumbs = gr.Gallery(
        label="Images (click one to show it)", columns=10, rows=1, height=150, allow_preview=False,
        object_fit="contain", elem_id="po-thumbs", visible=False, show_label=True,
    )  # fmt: skip
    with gr.Group(elem_id="po-review-panel"):
        with gr.Row(equal_height=True):
            p.review_next = gr.Button("Next to review (r)", size="sm", scale=1, elem_id="po-review-next")
            p.opacity = gr.Slider(0, 1, value=0.45, step=0.05, label="Mask opacity", scale=2, elem_id="po-opacity")
            p.mask_style = gr.Radio(
                [("Fill", "fill"), ("Outline", "outline")], value="fill", label="Masks", scale=1,
                elem_id="po-mask-style",
            )  # fmt: skip
        p.review = gr.Radio(
            choices=[], label="Review (after a run: the slices to check, lowest confidence first)",
            elem_id="po-review", elem_classes="po-review-list",
        )  # fmt: skip
# --- end review


def _results_panel(p: Page) -> None:
    with gr.Accordion("Results: metrics and downloads", open=True, elem_id="po-results"):
        p.metrics_md = gr.Markdown("No result yet.", elem_id="po-metrics")
        with gr.Row():
            p.table = gr.Dataframe(
                headers=["case", "slices", "dice", "jaccard", "flags"], label="Per case", interactive=False,
                elem_id="po-table", scale=1,
            )  # fmt: skip
            p.plot = gr.LinePlot(
                x="slice", y="dice", color="case", label="Dice per slice", elem_id="po-plot",
                y_lim=[0, 1], scale=1, height=260,
            )  # fmt: skip
        p.downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="po-downloads")
