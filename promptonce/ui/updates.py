"""What the page shows after an event: the updates of the image, results and object panels."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from . import handlers as H
from .layout import Page
from .session import Session
from .view import ViewState

__all__ = ["Updates", "PageUpdates"]

#: component -> new value or ``gr.update(...)``
Updates = dict[Any, Any]


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


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


class PageUpdates:
    """Builds the component updates of one page from a browser session's workspace."""

    def __init__(self, page: Page) -> None:
        self.p = page

    def view_updates(self, sess: Session, vs: ViewState, reset_view: bool = False) -> Updates:
        """The image, slider, info line, flagged list (and, on ``reset_view``, case list and window) for ``vs``."""
        p = self.p
        ws = sess.workspace
        if ws is None:
            return {p.view: None, p.info: "", p.case_dd: gr.update(choices=[], value=None)}
        v = min(max(vs.v, 0), ws.n_volumes - 1)
        n = ws.metas[v].n_slices
        k = n // 2 if reset_view else (vs.k if vs.slice1 else 0)
        k = min(max(k, 0), n - 1)
        path = H.save_view(sess, H.render(ws, v, k, vs.window, vs.show_reference))
        H.warm_view(ws, v, k, vs.window)  # encode the shown slice now, so that a click on it is quick
        upd: Updates = {
            p.view: str(path),
            p.slider: gr.update(minimum=1, maximum=max(n, 2), value=k + 1, visible=n > 1,
                                interactive=n > 1, label=f"Slice (1–{n})"),
            p.info: H.slice_info(ws, v, k),
        }  # fmt: skip
        if reset_view:
            upd[p.case_dd] = gr.update(
                choices=[(f"{i + 1}. {m.name}", i) for i, m in enumerate(ws.metas)], value=v,
                interactive=ws.n_volumes > 1,
            )  # fmt: skip
            upd[p.window_dd] = gr.update(visible=any(m.modality == "CT" for m in ws.metas))
        upd[p.flagged] = gr.update(
            choices=[(f"{ws.metas[fv].name} · slice {fk + 1}: {txt}"[:120], f"{fv}:{fk}")
                     for fv, fk, txt in ws.flagged()[:300]], value=None,
        )  # fmt: skip
        return upd

    def result_updates(self, sess: Session, window: Any) -> Updates:
        """The metrics text, table, plot and downloads of the current result."""
        import pandas as pd

        p = self.p
        ws = sess.workspace
        if ws is None or not ws.has_results():
            return {p.metrics_md: "No result yet.", p.table: None, p.downloads: None, p.plot: None}
        summary = H.results_summary(ws)
        files_out = H.write_downloads(ws, summary, window)
        rows = [[c["case"], c["slices"], _fmt(c["dice"]), _fmt(c["jaccard"]), c["flags"]] for c in summary["cases"]]
        per = summary["per_slice"]
        df = pd.DataFrame(per) if per else None
        x_title = "slice"
        if per and len({q["case"] for q in per}) == len(per):
            # one slice per case (an X-ray set): Dice per image, images named on the x axis
            df = pd.DataFrame([{"slice": q["case"], "dice": q["dice"], "case": "images"} for q in per])
            x_title = "image"
        return {
            p.metrics_md: H.summary_markdown(summary),
            p.table: pd.DataFrame(rows, columns=["case", "slices", "dice", "jaccard", "flags"]),
            p.plot: gr.update(value=df, x_title=x_title),
            p.downloads: [str(f) for f in files_out] or None,
        }

    def objects_updates(self, sess: Session) -> Updates:
        ws = sess.workspace
        return {
            self.p.obj_dd: gr.update(choices=_object_choices(ws), value=ws.active if ws else 1),
            self.p.legend: _objects_html(ws),
        }

    @staticmethod
    def notes(ws: H.Workspace | None) -> None:
        """Shows (and clears) the workspace's notes as warnings."""
        if ws is not None and ws.notes:
            for n in ws.notes:
                gr.Warning(html.escape(n))
            ws.notes.clear()
