"""The page's events: what each control does, as small handlers wired to the :class:`~.layout.Page`.

Every handler finds the browser's session, turns the page's view inputs into one
:class:`~promptonce.ui.view.ViewState`, calls :mod:`promptonce.ui.handlers` (which drives the
session's :class:`~promptonce.annotation.AnnotationSession`), and returns the components to update.
Errors go through :func:`guard`: PromptOnce errors are shown with their message (no server paths),
anything else is logged and shown as a generic message.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from ..errors import InputError, PromptOnceError
from . import handlers as H
from . import review as R  # --- review
from .layout import WINDOW_CHOICES, Page
from .modelqueue import ModelQueue, Waiting
from .session import Session, SessionStore
from .updates import PageUpdates, Updates
from .view import ViewState, display_options

__all__ = ["guard", "window_of", "Events"]

log = logging.getLogger(__name__)

def window_of(name: str | None, width: float | None, level: float | None) -> Any:
    """The window the page's controls choose: a preset name, or ``(width, level)`` for ``custom``."""
    if name == "custom":
        if width is None or level is None or not width or width <= 0:
            raise gr.Error("Give the custom window a width > 0 and a level.", print_exception=False)
        return (float(width), float(level))
    return name or "auto"


def guard(store: SessionStore) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turns PromptOnce errors into gr.Error (readable, no server paths) and hides all other errors."""

    def session_of(request: gr.Request | None) -> Session | None:
        sid = getattr(request, "session_hash", None)
        if not sid or sid not in store:
            return None
        try:
            return store.get(sid, create=False)
        except InputError:
            return None

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        def convert(exc: BaseException, request: gr.Request | None) -> gr.Error:
            sess = session_of(request)
            if isinstance(exc, PromptOnceError):
                return gr.Error(html.escape(H.user_message(exc, sess)), print_exception=False)
            log.exception("handler %s failed", fn.__name__)
            return gr.Error(H.user_message(exc, sess), print_exception=False)

        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    for out in fn(*args, **kwargs):
                        yield _no_change(out)
                except gr.Error:
                    raise
                except Exception as exc:  # noqa: BLE001 - converted for the page
                    raise convert(exc, kwargs.get("request")) from None

            return gen_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return _no_change(fn(*args, **kwargs))
            except gr.Error:
                raise
            except Exception as exc:  # noqa: BLE001 - converted for the page
                raise convert(exc, kwargs.get("request")) from None

        return wrapper

    return deco


def _no_change(out: Any) -> Any:
    """A handler's return value for Gradio: an empty dict (nothing to update) becomes ``gr.skip()``
    (Gradio reads an empty dict as one value, and fails an event with several outputs)."""
    if isinstance(out, dict) and not out:
        return gr.skip()
    return out


#: Draws a box by dragging on the image: a drag (more than 8 screen px) fills ``#po-drag`` with the
#: two corners in display pixels and presses the hidden ``#po-drag-go``; the click that ends a drag
#: is swallowed, so it adds no point or corner. A short press stays a click (Gradio's select event).
DRAG_JS = """
() => {
  if (window.__poDrag) return;
  window.__poDrag = true;
  let start = null, swallow = false;
  const img = () => document.querySelector('#po-view img');
  const at = (e, im) => {
    const r = im.getBoundingClientRect();
    const s = Math.min(r.width / im.naturalWidth, r.height / im.naturalHeight, 1);
    const ox = (r.width - im.naturalWidth * s) / 2, oy = (r.height - im.naturalHeight * s) / 2;
    return [(e.clientX - r.left - ox) / s, (e.clientY - r.top - oy) / s];
  };
  document.addEventListener('pointerdown', (e) => {
    const im = img();
    start = (im && e.target === im && e.button === 0) ? [e.clientX, e.clientY, at(e, im)] : null;
  }, true);
  document.addEventListener('pointerup', (e) => {
    const im = img();
    if (start && im && Math.hypot(e.clientX - start[0], e.clientY - start[1]) > 8) {
      const p1 = at(e, im);
      const box = document.querySelector('#po-drag textarea, #po-drag input');
      if (box) {
        swallow = true;
        setTimeout(() => { swallow = false; }, 400);  // no click comes when the drag ended off the image
        box.value = [start[2][0], start[2][1], p1[0], p1[1]].map((v) => v.toFixed(1)).join(',');
        box.dispatchEvent(new Event('input', { bubbles: true }));
        setTimeout(() => { const b = document.querySelector('#po-drag-go'); if (b) b.click(); }, 60);
      }
    }
    start = null;
  }, true);
  document.addEventListener('click', (e) => {
    if (swallow) { swallow = false; e.stopPropagation(); e.preventDefault(); }
  }, true);
  document.addEventListener('dragstart', (e) => { if (e.target === img()) e.preventDefault(); }, true);
}
"""


def _soft(fn: Callable[..., Any], status: Any) -> Callable[..., Any]:
    """``fn`` with a ``gr.Error`` turned into a warning toast and the status line (see :meth:`Events.soften_errors`)."""

    def told(err: gr.Error) -> dict[Any, Any]:
        text = str(getattr(err, "message", "") or err)
        gr.Warning(text)
        return {status: f"⚠ {text}"}

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except gr.Error as err:
                yield told(err)

        return gen

    @functools.wraps(fn)
    def plain(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error as err:
            return told(err)

    return plain


def _all_uploads(paths: list[Any]) -> bool:
    """True when every path lies in Gradio's upload folder (so deleting the originals is safe)."""
    from gradio.utils import get_upload_folder

    root = Path(get_upload_folder()).resolve()
    try:
        return bool(paths) and all(root in Path(p).resolve().parents for p in paths)
    except (OSError, TypeError):
        return False


def _not_running(sess: Session, what: str = "A run is in progress; wait for it or press Stop first.") -> None:
    if sess.running.is_set():
        raise gr.Error(what, print_exception=False)


class Events(PageUpdates):
    """The page's handlers and their wiring.

    Args:
        page: the components.
        store: the session store.
        model_limit: how many model requests (clicks, runs, corrections) run at once in the process.
    """

    def __init__(self, page: Page, store: SessionStore, model_limit: int = 1) -> None:
        super().__init__(page)
        self.store = store
        self.guard = guard(store)
        # model work waits in this process's line (ui/modelqueue.py), which tells the page its place;
        # Gradio's own limit only bounds the threads (a request waiting there would get no word)
        self.line = ModelQueue(model_limit)
        self.waiting: set[str] = set()  # sessions whose request waits in the line
        self.model_kw: dict[str, Any] = dict(concurrency_limit=max(16, 4 * int(model_limit)), concurrency_id="model")
        self.view_kw: dict[str, Any] = dict(concurrency_limit=8, concurrency_id="view")
        self.nav_kw: dict[str, Any] = dict(concurrency_limit=8, concurrency_id="view", show_progress="hidden")

    def wire(self, demo: gr.Blocks) -> None:
        """Connects every control of the page to its handler."""
        self.wire_loading()
        self.wire_navigation()
        self.wire_references()
        self.wire_prompting()
        self.wire_running()
        self.wire_review()  # --- review
        self.wire_api(demo)
        self.wire_recover()
        self.soften_errors(demo)

    # ------------------------------------------------------------------ shared pieces
    def sess(self, request: gr.Request) -> Session:
        return self.store.get(request.session_hash)

    @staticmethod
    def state(v: Any, k1: Any, wname: Any, ww: Any, wl: Any, show: Any) -> ViewState:
        """The page's view inputs as one :class:`ViewState`."""
        return ViewState(v, k1, window_of(wname, ww, wl), bool(show))

    # ------------------------------------------------------------------ loading
    def after_load(self, sess: Session, window: Any, show: bool) -> Updates:
        p = self.p
        ws = sess.workspace
        upd = self.view_updates(sess, ViewState(0, None, window, show), reset_view=True)
        upd.update(self.objects_updates(sess))
        upd.update(self.result_updates(sess, window))
        n_ref = sum(r is not None for r in ws.references)
        kinds = sorted({m.source_format for m in ws.metas})
        n_items = sum(m.n_slices for m in ws.metas)
        upd[p.status] = (
            f"Loaded **{ws.n_volumes} case(s)** ({', '.join(kinds)}; {n_items} {H.unit_of(ws, n_items)}"
            + (f", {n_ref} with a reference" if n_ref else "")
            + "). Click on the object in the image."
        )
        upd[p.files] = None
        upd[p.refs] = None
        # an image set is segmented as a whole by default; a volume slice by slice
        image_set = ws.n_volumes > 1 and all(m.n_slices == 1 for m in ws.metas)
        upd[p.scope] = "dataset" if image_set else "volume"
        upd[p.ref_labels] = ""
        upd.update(self.recover_load_updates(ws))  # --- recover: load notes, time point, label names
        self.notes(ws)
        return upd

    def on_load(self, fs, rs, as_, wname, ww, wl, show, request: gr.Request):
        sess = self.sess(request)
        _not_running(sess, "A run is in progress; stop it before loading new files.")
        paths = [f if isinstance(f, str) else getattr(f, "name", f) for f in (fs or [])]
        rpaths = [f if isinstance(f, str) else getattr(f, "name", f) for f in (rs or [])]
        try:
            H.load_inputs(sess, paths, rpaths, images_as=as_ or "auto", remove_sources=_all_uploads(paths + rpaths))
        except Exception as exc:  # noqa: BLE001 - any failed load: one message, upload fields emptied
            return self.failed_load(sess, exc)
        finally:
            self.store.sweep_upload_temps()  # Gradio's empty temp files of earlier uploads
        return self.after_load(sess, window_of(wname, ww, wl), show)

    def example_handler(self, name: str) -> Callable[..., Any]:
        def on_example(wname, ww, wl, show, request: gr.Request):
            sess = self.sess(request)
            _not_running(sess, "A run is in progress; stop it before loading an example.")
            try:
                H.load_example(sess, name)
            except Exception as exc:  # noqa: BLE001 - any failed load: one message
                return self.failed_load(sess, exc)
            return self.after_load(sess, "auto" if wname == "custom" else wname, show)

        on_example.__name__ = f"on_example_{name}"
        return self.guard(on_example)

    def wire_loading(self) -> None:
        p = self.p
        outputs = [*p.view_outputs, *p.object_outputs, *p.result_outputs, p.status, p.files, p.refs, p.scope,
                   p.ref_labels, *self.recover_outputs]  # fmt: skip
        kw = dict(concurrency_limit=4, concurrency_id="load")
        p.load_btn.click(self.guard(self.on_load), [p.files, p.refs, p.images_as, *p.window_inputs], outputs,
                         api_name="load", **kw)  # fmt: skip
        for btn, name in ((p.ex_ct, "ct"), (p.ex_xr, "xray")):
            btn.click(self.example_handler(name), p.window_inputs, outputs, api_name=f"example_{name}", **kw)

    # ------------------------------------------------------------------ navigation
    def nav_handler(self, kind: str) -> Callable[..., Any]:
        def on_nav(v, k1, wname, ww, wl, show, request: gr.Request):
            sess = self.sess(request)
            ws = H.workspace(sess)
            vs = self.state(v, k1, wname, ww, wl, show)
            v, k1 = vs.v, int(k1 or 1)
            reset = False
            if kind in ("prev", "next"):
                step = -1 if kind == "prev" else 1
                if ws.metas[v].n_slices > 1:
                    k1 = min(max(k1 + step, 1), ws.metas[v].n_slices)
                else:
                    v, k1, reset = min(max(v + step, 0), ws.n_volumes - 1), 1, True
            elif kind == "case":
                k1 = ws.metas[v].n_slices // 2 + 1
            upd = self.view_updates(sess, vs.at(v, k1))
            if reset:
                upd[self.p.case_dd] = gr.update(value=v)
            return upd

        on_nav.__name__ = f"on_{kind}"
        return self.guard(on_nav)

    def on_flagged(self, choice, wname, ww, wl, show, request: gr.Request):
        sess = self.sess(request)
        H.workspace(sess)
        if not choice:
            return {}
        v, k = (int(x) for x in str(choice).split(":"))
        upd = self.view_updates(sess, ViewState(v, k + 1, window_of(wname, ww, wl), show))
        upd[self.p.case_dd] = gr.update(value=v)
        return upd

    def wire_navigation(self) -> None:
        p, nav_kw = self.p, self.nav_kw
        inputs, outputs = p.view_inputs, p.view_outputs
        slider = self.nav_handler("slider")
        p.slider.release(slider, inputs, outputs, api_name="show_slice", **nav_kw)
        p.slider.input(slider, inputs, outputs, trigger_mode="always_last", api_visibility="private", **nav_kw)
        p.prev_btn.click(self.nav_handler("prev"), inputs, outputs, api_name="prev", **nav_kw)
        p.next_btn.click(self.nav_handler("next"), inputs, outputs, api_name="next", **nav_kw)
        p.case_dd.input(self.nav_handler("case"), inputs, outputs, api_name="show_case", **nav_kw)
        p.show_ref.input(slider, inputs, outputs, api_visibility="private", **nav_kw)

        def on_window(wname, *rest):
            custom = wname == "custom"
            return gr.update(visible=custom), gr.update(visible=custom)

        p.window_dd.input(on_window, [p.window_dd], [p.win_w, p.win_l], queue=False, api_visibility="private").then(
            slider, inputs, outputs, api_visibility="private", **nav_kw
        )
        for num in (p.win_w, p.win_l):
            num.submit(slider, inputs, outputs, api_visibility="private", **nav_kw)
        p.flagged.input(self.guard(self.on_flagged), [p.flagged, *p.window_inputs], outputs,
                        api_visibility="private", **nav_kw)  # fmt: skip

    # ------------------------------------------------------------------ reference labels
    def on_ref_labels(self, text, v, k1, wname, ww, wl, show, request: gr.Request):
        sess = self.sess(request)
        ws = H.workspace(sess)
        before = ws.ref_labels
        if H.set_reference_labels(ws, text) == before:
            return {}
        vs = self.state(v, k1, wname, ww, wl, show)
        upd = self.view_updates(sess, vs)
        upd = {c: u for c, u in upd.items() if c in (self.p.view, self.p.info)}  # leave the position as it is now
        upd.update(self.result_updates(sess, vs.window))
        return upd

    def wire_references(self) -> None:
        p = self.p
        handler = self.guard(self.on_ref_labels)
        outputs = [p.view, p.info, *p.result_outputs]
        p.ref_labels.submit(handler, [p.ref_labels, *p.view_inputs], outputs, api_name="reference_labels",
                            **self.nav_kw)  # fmt: skip
        p.ref_labels.blur(handler, [p.ref_labels, *p.view_inputs], outputs, api_visibility="private", **self.nav_kw)

    # ------------------------------------------------------------------ prompting
    def do_click(self, sess: Session, vs: ViewState, x: float, y: float, md: str, mdl: str | None) -> Updates:
        ws = H.workspace(sess)
        _not_running(sess, "A run is in progress; wait for it or press Stop before clicking.")
        if not mdl:
            raise gr.Error("No model is available on this server.", print_exception=False)
        with sess.lock:
            msg = H.click(ws, vs.v, vs.k, x, y, md, mdl, vs.window)
        upd = self.view_updates(sess, vs)
        upd[self.p.status] = msg
        self.notes(ws)
        return upd

    def clicking(self, sess: Session, vs: ViewState, x: float, y: float, md: str, mdl: str | None) -> Iterator[Updates]:
        """A click through the model line: the page hears its place while it waits."""
        H.workspace(sess)
        _not_running(sess, "A run is in progress; wait for it or press Stop before clicking.")
        sess.cancel.clear()
        yield from self.queued(sess, "click", lambda: self.do_click(sess, vs, x, y, md, mdl))

    def on_select(self, v, k1, md, mdl, wname, ww, wl, show, evt: gr.SelectData, request: gr.Request):
        if evt is None or evt.index is None:
            yield {}
            return
        vs = self.state(v, k1, wname, ww, wl, show)
        yield from self.clicking(self.sess(request), vs, evt.index[0], evt.index[1], md, mdl)

    def on_click_at(self, v, k1, x, y, md, mdl, wname, ww, wl, show, request: gr.Request):
        """API: a click at display pixel (x, y) of the shown case/slice (what a click on the image does)."""
        vs = self.state(v, k1, wname, ww, wl, show)
        if x is None or y is None:
            raise gr.Error("Give the click's x and y (display pixels).", print_exception=False)
        yield from self.clicking(self.sess(request), vs, float(x), float(y), md, mdl)

    def on_add_object(self, name, request: gr.Request):
        sess = self.sess(request)
        ws = H.workspace(sess)
        with sess.lock:
            oid = H.add_object(ws, name)
        upd = self.objects_updates(sess)
        upd[self.p.obj_name] = ""
        upd[self.p.status] = f"Added **{html.escape(ws.object(oid).name)}**: click on it in the image."
        return upd

    def on_object(self, oid, request: gr.Request):
        sess = self.sess(request)
        ws = H.workspace(sess)
        if oid is not None:
            H.set_active(ws, int(oid))
        return self.objects_updates(sess)

    def on_undo(self, v, k1, mdl, wname, ww, wl, show, request: gr.Request):
        sess = self.sess(request)
        H.workspace(sess)
        _not_running(sess)
        sess.cancel.clear()
        vs = self.state(v, k1, wname, ww, wl, show)
        yield from self.queued(sess, "click", lambda: self.do_undo(sess, vs, mdl))

    def do_undo(self, sess: Session, vs: ViewState, mdl: str | None) -> Updates:
        ws = H.workspace(sess)
        with sess.lock:
            act = H.undo_action(ws, mdl or "auto", vs.window)
        if act is None or act.case < 0:
            upd = self.view_updates(sess, vs)
        else:
            upd = self.view_updates(sess, vs.at(act.case, act.slice_index + 1))
            upd[self.p.case_dd] = gr.update(value=act.case)
        upd.update(self.objects_updates(sess))
        upd[self.p.status] = H.undo_message(ws, act)
        return upd

    def on_reset(self, v, k1, wname, ww, wl, show, request: gr.Request):
        sess = self.sess(request)
        ws = H.workspace(sess)
        _not_running(sess)
        vs = self.state(v, k1, wname, ww, wl, show)
        with sess.lock:
            H.reset_prompts(ws)
        upd = self.view_updates(sess, vs)
        upd.update(self.result_updates(sess, vs.window))
        upd[self.p.status] = "All prompts and results removed."
        return upd

    def wire_prompting(self) -> None:
        p, g = self.p, self.guard
        click_inputs = [p.case_dd, p.slider, p.mode, p.model, *p.window_inputs]
        click_outputs = [*p.view_outputs, p.status]
        p.view.select(g(self.on_select), click_inputs, click_outputs, api_visibility="private",
                      show_progress="minimal", **self.model_kw)  # fmt: skip
        # the same as a click on the image, for API clients: x and y are hidden numbers
        api_x, api_y = gr.Number(visible=False), gr.Number(visible=False)
        api_btn = gr.Button(visible=False, elem_id="po-api-click")
        api_btn.click(g(self.on_click_at), [p.case_dd, p.slider, api_x, api_y, p.mode, p.model, *p.window_inputs],
                      click_outputs, api_name="click_at", **self.model_kw)  # fmt: skip
        obj_outputs = [*p.object_outputs, p.obj_name, p.status]
        p.add_obj.click(g(self.on_add_object), [p.obj_name], obj_outputs, api_name="add_object", **self.view_kw)
        p.obj_name.submit(g(self.on_add_object), [p.obj_name], obj_outputs, api_visibility="private", **self.view_kw)
        p.obj_dd.input(g(self.on_object), [p.obj_dd], p.object_outputs, api_name="set_object", **self.view_kw)
        p.undo_btn.click(g(self.on_undo), [p.case_dd, p.slider, p.model, *p.window_inputs],
                         [*click_outputs, *p.object_outputs], api_name="undo", **self.model_kw)  # fmt: skip
        p.reset_btn.click(g(self.on_reset), p.view_inputs, [*p.view_outputs, *p.result_outputs, p.status],
                          api_name="reset", **self.view_kw)  # fmt: skip

    # ------------------------------------------------------------------ running
    def run_loop(self, sess: Session, gen: Iterator[H.RunProgress], vs: ViewState, progress: gr.Progress,
                 ticket: Any = None) -> Iterator[Updates]:  # fmt: skip
        """Streams a run's progress to the page, then shows the result."""
        p = self.p
        ws = H.workspace(sess)
        unit = H.unit_of(ws)
        last = None
        for rp in gen:
            last = rp
            sess.touch()
            if rp.finished:
                break
            if ticket is not None:
                self.line.report(ticket, rp.eta_s)  # what the next in line is told
            progress((rp.done, rp.total), desc=H.progress_text(rp, unit), unit=unit)
            upd: Updates = {p.status: H.progress_text(rp, unit)}
            if rp.volume_index == vs.v and rp.slice_index >= 0:
                upd.update(self.view_updates(sess, vs.at(rp.volume_index, rp.slice_index + 1)))
            yield upd
        upd = self.view_updates(sess, vs)
        upd.update(self.result_updates(sess, vs.window))
        upd[p.status] = H.progress_text(last, unit) if last is not None else "Nothing was run."
        self.notes(ws)
        yield upd

    def _running(self, sess: Session, start: Callable[[], Iterator[H.RunProgress]], vs: ViewState,
                 progress: gr.Progress) -> Iterator[Updates]:  # fmt: skip
        _not_running(sess, "A run is already in progress in this tab.")
        sess.cancel.clear()
        sess.running.set()
        ticket = self.line.join("run")
        try:
            try:
                yield from self.wait_in_line(sess, ticket)
            except Waiting:
                yield {self.p.status: "Stopped while waiting in line: nothing was run."}
                return
            yield from self.run_loop(sess, start(), vs, progress, ticket)
        finally:
            self.line.leave(ticket)
            sess.running.clear()

    def on_run(self, v, k1, sc, st, mdl, wname, ww, wl, show, request: gr.Request, progress=gr.Progress()):
        sess = self.sess(request)
        ws = H.workspace(sess)
        if not mdl:
            raise gr.Error("No model is available on this server.", print_exception=False)
        vs = self.state(v, k1, wname, ww, wl, show)
        yield from self._running(sess, lambda: H.run(ws, sc, st, mdl, vs.window, vs.v, sess.cancel), vs, progress)

    def on_correct(self, v, k1, mdl, wname, ww, wl, show, request: gr.Request, progress=gr.Progress()):
        sess = self.sess(request)
        ws = H.workspace(sess)
        vs = self.state(v, k1, wname, ww, wl, show)
        yield from self._running(
            sess, lambda: H.apply_corrections(ws, mdl or "auto", vs.window, sess.cancel), vs, progress
        )

    def on_stop(self, v, k1, wname, ww, wl, show, request: gr.Request):
        sess = self.sess(request)
        was_waiting = sess.session_id in self.waiting
        sess.cancel.set()
        was_running = sess.running.is_set()
        # wait (briefly) for the run to notice, so what is shown is what was kept
        for _ in range(100):
            if not sess.running.is_set():
                break
            threading.Event().wait(0.05)
        ws = sess.workspace
        if ws is None:
            return {self.p.status: "Nothing is running."}
        if was_waiting:
            return {self.p.status: "Stopped while waiting in line: nothing was run."}
        vs = self.state(v, k1, wname, ww, wl, show)
        if ws.run_info is not None and was_running:
            ws.run_info.cancelled = True
        upd = self.view_updates(sess, vs)
        upd.update(self.result_updates(sess, vs.window))
        done = int(sum(d.sum() for d in ws.done.values()))
        kept = f"Stopped. {done} {H.unit_of(ws, done)} segmented so far are kept."
        upd[self.p.status] = kept if was_running else "Nothing is running."
        return upd

    def wire_running(self) -> None:
        p, g = self.p, self.guard
        outputs = [*p.view_outputs, *p.result_outputs, p.status]
        run_ev = p.run_btn.click(
            g(self.on_run), [p.case_dd, p.slider, p.scope, p.strategy, p.model, *p.window_inputs], outputs,
            api_name="run", show_progress_on=[p.status], **self.model_kw,
        )  # fmt: skip
        correct_ev = p.correct_btn.click(
            g(self.on_correct), [p.case_dd, p.slider, p.model, *p.window_inputs], outputs,
            api_name="apply_corrections", show_progress_on=[p.status], **self.model_kw,
        )  # fmt: skip
        p.stop_btn.click(g(self.on_stop), p.view_inputs, outputs, cancels=[run_ev, correct_ev], api_name="stop",
                         concurrency_limit=None, concurrency_id="stop", queue=True)  # fmt: skip
        if p.review is not None:
            # the review list follows the shown image's changes; a run that ends on the image it already showed
            # (a dataset run showing its seed case) changes none, and the list kept the cases done by then
            for ev in (run_ev, correct_ev):
                ev.then(g(self.on_review_refresh), p.view_inputs, p.review_outputs, api_visibility="private",
                        **self.nav_kw)  # fmt: skip

    # ------------------------------------------------------------------ summary API + lifecycle
    def on_summary(self, request: gr.Request) -> str:
        """API: the current result's figures as JSON (cases, Dice, prompts, time)."""
        ws = H.workspace(self.sess(request))
        return H.write_json_text(H.results_summary(ws))

    def wire_api(self, demo: gr.Blocks) -> None:
        summary_json = gr.Textbox(visible=False)
        summary_btn = gr.Button(visible=False)
        summary_btn.click(self.guard(self.on_summary), None, summary_json, api_name="summary", **self.view_kw)

        def on_unload(request: gr.Request) -> None:
            self.store.close(request.session_hash)

        demo.unload(on_unload)

    # --- review: the ranked review list, next-to-review, reformats, measures, mask display options
    def view_updates(self, sess: Session, vs: ViewState, reset_view: bool = False) -> Updates:
        """The page's view updates (:class:`~.updates.PageUpdates`) plus the review components."""
        ws = sess.workspace
        choices = R.window_choices(ws, WINDOW_CHOICES) if ws is not None else WINDOW_CHOICES
        if reset_view and isinstance(vs.window, str) and vs.window not in choices:
            vs = ViewState(vs.case, vs.slice1, "auto", vs.show_reference)  # e.g. a CT preset, then an X-ray set
        upd = super().view_updates(sess, vs, reset_view)
        if ws is not None:
            # what was just drawn: the review refresh that follows the image's change shows the same view
            v = min(max(vs.v, 0), ws.n_volumes - 1)
            n = ws.metas[v].n_slices
            k = min(max(n // 2 if reset_view else (vs.k if vs.slice1 else 0), 0), n - 1)
            self._shown[sess] = ViewState(v, k + 1, vs.window, vs.show_reference)
        if p_flagged := self.p.flagged:
            upd[p_flagged] = gr.update(visible=False)  # the review list below replaces the flagged-slices menu
        if ws is not None and reset_view:
            p = self.p
            upd[p.window_dd] = gr.update(choices=choices, visible=True, **({"value": "auto"} if vs.window == "auto" else {}))
            if not isinstance(vs.window, tuple | list):
                w, level = R.auto_window_numbers(ws, 0)
                upd[p.win_w], upd[p.win_l] = w, level
        return upd

    def review_updates(self, sess: Session, vs: ViewState, reset_view: bool = False) -> Updates:
        """The review list (current slice selected when listed), the reformats, the measures and (image sets)
        the thumbnails for ``vs``."""
        p = self.p
        ws = sess.workspace
        if ws is None or p.review is None:
            return {}
        v = min(max(vs.v, 0), ws.n_volumes - 1)
        n = ws.metas[v].n_slices
        k = n // 2 if reset_view else (vs.k if vs.slice1 else 0)
        k = min(max(k, 0), n - 1)
        items = R.review_items(ws)
        here = f"{v}:{k}"
        upd: Updates = {
            p.review: gr.update(
                choices=R.review_choices(ws, items), label=R.review_heading(ws, items),
                value=here if any(it.key == here for it in items) else None,
            ),
        }  # fmt: skip
        if n > 1:
            pos = R.reformat_position(ws, v, k)
            for comp, plane in ((p.coronal, "coronal"), (p.sagittal, "sagittal")):
                rgb = R.reformat(ws, v, k, plane, vs.window, position=pos)  # type: ignore[arg-type]
                upd[comp] = gr.update(value=str(R.save_reformat(sess, rgb, plane)), visible=True)
            if p.reformat_col is not None:
                upd[p.reformat_col] = gr.update(visible=True)
        else:
            if p.reformat_col is not None:
                upd[p.reformat_col] = gr.update(visible=False)
            upd[p.coronal] = gr.update(value=None, visible=False)
            upd[p.sagittal] = gr.update(value=None, visible=False)
        if p.thumbs is not None:
            if not R.is_image_set(ws):
                if self._thumbs_key.pop(sess, None) is not None or reset_view:
                    upd[p.thumbs] = gr.update(value=None, visible=False)
            elif reset_view or self._thumbs_key.get(sess) != R.thumbnails_key(ws):
                self._thumbs_key[sess] = R.thumbnails_key(ws)
                upd[p.thumbs] = gr.update(value=R.thumbnails(ws, sess, vs.window), visible=True, selected_index=None)
        legend = R.reference_legend(ws, v) if vs.show_reference else ""
        upd[p.measures] = "\n\n".join(x for x in (R.measures_markdown(ws, v, k), legend) if x)
        return upd

    @property
    def _shown(self) -> Any:
        """The view each browser session was last sent (weak: it goes with the session)."""
        import weakref

        shown = self.__dict__.get("_shown_views")
        if shown is None:
            shown = self.__dict__["_shown_views"] = weakref.WeakKeyDictionary()
        return shown

    @property
    def _thumbs_key(self) -> Any:
        """The thumbnails each browser session was last sent (weak: it goes with the session)."""
        import weakref

        keys = self.__dict__.get("_thumbs_keys")
        if keys is None:
            keys = self.__dict__["_thumbs_keys"] = weakref.WeakKeyDictionary()
        return keys

    def on_thumb(self, wname, ww, wl, show, evt: gr.SelectData, request: gr.Request):
        sess = self.sess(request)
        ws = H.workspace(sess)
        if evt is None or evt.index is None:
            return {}
        v = int(evt.index if not isinstance(evt.index, list | tuple) else evt.index[0])
        if not 0 <= v < ws.n_volumes:
            return {}
        upd = self.view_updates(sess, ViewState(v, 1, window_of(wname, ww, wl), bool(show)))
        upd[self.p.case_dd] = gr.update(value=v)
        return upd

    def on_review_refresh(self, v, k1, wname, ww, wl, show, request: gr.Request):
        """After the shown image changed: the review components for the view the page now shows (the one the
        server last drew; the page's slider may not have its new value yet when the change event fires)."""
        sess = self.sess(request)
        if sess.workspace is None:
            return {}
        vs = self._shown.get(sess) or self.state(v, k1, wname, ww, wl, show)
        return self.review_updates(sess, vs)

    def on_review(self, choice, wname, ww, wl, show, request: gr.Request):
        sess = self.sess(request)
        H.workspace(sess)
        where = R.parse_choice(choice)
        if where is None:
            return {}
        v, k = where
        upd = self.view_updates(sess, ViewState(v, k + 1, window_of(wname, ww, wl), bool(show)))
        upd[self.p.case_dd] = gr.update(value=v)
        return upd

    def on_review_next(self, v, k1, wname, ww, wl, show, request: gr.Request):
        sess = self.sess(request)
        ws = H.workspace(sess)
        vs = self.state(v, k1, wname, ww, wl, show)
        nxt = R.next_to_review(ws, vs.v, vs.k)
        if nxt is None:
            text = "Nothing to review: run a segmentation first." if not ws.has_results() else "Nothing flagged to review."
            return {self.p.status: text}
        upd = self.view_updates(sess, vs.at(nxt[0], nxt[1] + 1))
        upd[self.p.case_dd] = gr.update(value=nxt[0])
        return upd

    def on_display(self, opacity, style, v, k1, wname, ww, wl, show, request: gr.Request):
        sess = self.sess(request)
        opts = display_options(sess)
        if opacity is not None:
            opts.opacity = min(max(float(opacity), 0.0), 1.0)
        opts.fill = style != "outline"
        if sess.workspace is None:
            return {}
        return self.view_updates(sess, self.state(v, k1, wname, ww, wl, show))

    def wire_review(self) -> None:
        p, g, nav_kw = self.p, self.guard, self.nav_kw
        if p.review is None:
            return
        outputs = p.view_outputs
        # every handler that changes the image refreshes the review components through this one event
        p.view.change(g(self.on_review_refresh), p.view_inputs, p.review_outputs, api_visibility="private",
                      **nav_kw)  # fmt: skip
        p.review.input(g(self.on_review), [p.review, *p.window_inputs], outputs, api_visibility="private", **nav_kw)
        p.review_next.click(g(self.on_review_next), p.view_inputs, [*outputs, p.status], api_name="next_to_review",
                            **nav_kw)  # fmt: skip
        display = g(self.on_display)
        inputs = [p.opacity, p.mask_style, *p.view_inputs]
        p.opacity.release(display, inputs, outputs, api_visibility="private", **nav_kw)
        p.mask_style.input(display, inputs, outputs, api_visibility="private", **nav_kw)
        if p.thumbs is not None:
            p.thumbs.select(g(self.on_thumb), p.window_inputs, outputs, api_visibility="private", **nav_kw)
    # --- end review
    # --- recover: the model line (queue honesty) -----------------------------------------------------
    def wait_in_line(self, sess: Session, ticket: Any) -> Iterator[Updates]:
        """Yields the page's "waiting" line until ``ticket``'s turn.

        Raises:
            Waiting: the person pressed Stop (the ticket has left the line).
        """
        self.waiting.add(sess.session_id)
        try:
            for place in self.line.wait(ticket, sess.cancel):
                sess.touch()
                yield {self.p.status: place.text()}
        finally:
            self.waiting.discard(sess.session_id)

    def queued(self, sess: Session, kind: str, work: Callable[[], Updates]) -> Iterator[Updates]:
        """Runs ``work`` when the model line lets it (the page hears its place meanwhile)."""
        ticket = self.line.join(kind)
        try:
            try:
                yield from self.wait_in_line(sess, ticket)
            except Waiting:
                yield {self.p.status: "Stopped while waiting in line: nothing was done."}
                return
            yield work()
        finally:
            self.line.leave(ticket)

    # --- recover: one message, no error badges ---------------------------------------------------------
    def soften_errors(self, demo: gr.Blocks) -> None:
        """Events that update the status line report their errors there and in a warning toast.

        A raised ``gr.Error`` marks every output of the event with a red "Error" badge (a click before
        loading put one on nine panels). For these events the message goes to the status line (and a
        warning toast, which marks nothing), and every other component stays as it was.
        """
        status = self.p.status
        for bf in demo.fns.values():
            if bf.fn is not None and any(o is status for o in bf.outputs):
                bf.fn = _soft(bf.fn, status)

    # --- recover: failed loads, the time point of a 4D input ---------------------------------------
    @property
    def recover_outputs(self) -> list[Any]:
        """What a load (or a failed one) also updates: the load panel's message and the time point control."""
        return [self.p.load_msg, self.p.time_point]

    def recover_load_updates(self, ws: H.Workspace) -> Updates:
        """The load message cleared, and the time point control shown for a 4D input (hidden otherwise)."""
        p = self.p
        tp = ws.time_points
        # the load's notes (e.g. references not used) stay on the page under the Load button
        notes = "\n\n".join(f"⚠ {html.escape(n)}" for n in ws.notes)
        ws.notes.clear()
        upd: Updates = {p.ref_labels: gr.update(value="", placeholder=self.ref_labels_hint(ws))}
        if tp is None:
            upd.update({p.load_msg: notes, p.time_point: gr.update(visible=False, value=1)})
            return upd
        t = (ws.time_index or 0) + 1
        four_d = f"4D input: showing time point **{t} of {tp.count}**; choose another below."
        return upd | {
            p.load_msg: four_d + ("\n\n" + notes if notes else ""),
            p.time_point: gr.update(visible=True, minimum=1, maximum=tp.count, value=t, step=1, interactive=True,
                                    label=f"Time point (1–{tp.count})"),
        }  # fmt: skip

    @staticmethod
    def ref_labels_hint(ws: H.Workspace) -> str:
        """The reference-label box's placeholder: the label names the reference carries, when it has some."""
        try:
            names = ws.reference_label_names()
        except PromptOnceError:
            names = {}
        if not names:
            return "all; e.g. 1,2"
        shown = ", ".join(f"{k} {v}" for k, v in sorted(names.items())[:6])
        return f"all; numbers or names: {shown}" + (" …" if len(names) > 6 else "")

    def failed_load(self, sess: Session, exc: Exception) -> Updates:
        """A load that failed: its one message under the Load button, the upload fields emptied (their
        files are gone from the server), the page back to "nothing loaded" and every control usable.
        Errors other than PromptOnce's are logged and shown as a generic message."""
        p = self.p
        if not isinstance(exc, PromptOnceError):
            log.error("loading failed", exc_info=exc)
        msg = H.user_message(exc, sess)
        upd = self.view_updates(sess, ViewState(0, None, "auto", False)) if sess.workspace is None else {}
        if sess.workspace is None:
            upd.update({p.slider: gr.update(visible=False), p.flagged: gr.update(choices=[], value=None)})
            upd.update(self.result_updates(sess, "auto"))
            upd.update(self.objects_updates(sess))
            upd[p.status] = "Load images to start."
            upd[p.time_point] = gr.update(visible=False, value=1)
        upd[p.load_msg] = f"**Not loaded:** {html.escape(msg)}"
        upd[p.files] = None
        upd[p.refs] = None
        return upd

    def on_time_point(self, t, wname, ww, wl, show, request: gr.Request):
        sess = self.sess(request)
        ws = H.workspace(sess)
        _not_running(sess, "A run is in progress; stop it before choosing another time point.")
        if ws.time_points is None or t is None:
            return {}
        index = int(t) - 1
        if index == (ws.time_index or 0):
            return {}
        try:
            H.load_time_point(sess, index)
        except Exception as exc:  # noqa: BLE001 - any failed load: one message, upload fields emptied
            return self.failed_load(sess, exc)
        return self.after_load(sess, window_of(wname, ww, wl), show)

    def on_drag(self, corners, v, k1, mdl, wname, ww, wl, show, request: gr.Request):
        """A box drawn by dragging on the image (``corners``: ``"x0,y0,x1,y1"`` display pixels)."""
        sess = self.sess(request)
        ws = H.workspace(sess)
        _not_running(sess, "A run is in progress; wait for it or press Stop before drawing.")
        if not mdl:
            raise gr.Error("No model is available on this server.", print_exception=False)
        if not corners:
            yield {}
            return
        vs = self.state(v, k1, wname, ww, wl, show)
        sess.cancel.clear()

        def work() -> Updates:
            with sess.lock:
                msg = H.drag_box(ws, vs.v, vs.k, corners, mdl, vs.window)
            upd = self.view_updates(sess, vs)
            upd[self.p.status] = msg
            return upd

        yield from self.queued(sess, "click", work)

    def wire_recover(self) -> None:
        p = self.p
        p.drag_go.click(self.guard(self.on_drag), [p.drag_box, p.case_dd, p.slider, p.model, *p.window_inputs],
                        [*p.view_outputs, p.status], api_name="drag_box", show_progress="minimal",
                        **self.model_kw)  # fmt: skip
        p.view.change(None, None, None, js=DRAG_JS)  # (re)installs the drag listener once the image exists
        outputs = [*p.view_outputs, *p.object_outputs, *p.result_outputs, p.status, p.files, p.refs, p.scope,
                   p.ref_labels, *self.recover_outputs]  # fmt: skip
        p.time_point.release(self.guard(self.on_time_point), [p.time_point, *p.window_inputs], outputs,
                             api_name="time_point", concurrency_limit=4, concurrency_id="load")  # fmt: skip
