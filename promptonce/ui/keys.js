// PromptOnce keyboard and wheel shortcuts. Outside text fields: arrows step slices/images, p/n/b pick
// the click mode, u undoes, r jumps to the next slice to review. The mouse wheel over the image (or a
// reformat) steps slices and never scrolls the page. They click the page's own buttons, so they go
// through the same handlers.
(function () {
  function typing(el) {
    if (!el) return false;
    const tag = (el.tagName || "").toLowerCase();
    return tag === "input" || tag === "textarea" || tag === "select" || el.isContentEditable;
  }
  function press(id) {
    const el = document.getElementById(id);
    const btn = el && (el.tagName === "BUTTON" ? el : el.querySelector("button"));
    if (btn) { btn.click(); return true; }
    return false;
  }
  function mode(value) {
    const input = document.querySelector('#po-mode input[value="' + value + '"]');
    if (input) { input.click(); return true; }
    return false;
  }
  document.addEventListener("keydown", function (e) {
    if (e.altKey || e.ctrlKey || e.metaKey || typing(e.target)) return;
    let done = false;
    switch (e.key) {
      case "ArrowRight": case "ArrowDown": case "PageDown": done = press("po-next"); break;
      case "ArrowLeft": case "ArrowUp": case "PageUp": done = press("po-prev"); break;
      case "p": done = mode("positive"); break;
      case "n": done = mode("negative"); break;
      case "b": done = mode("box"); break;
      case "u": done = press("po-undo"); break;
      case "r": done = press("po-review-next"); break;
    }
    if (done) e.preventDefault();
  });
  // the wheel over the image: one slice per notch (small touchpad deltas add up), at most one step
  // every 60 ms so that a fast spin does not queue dozens of renders
  const VIEWS = ["po-view", "po-coronal", "po-sagittal"];
  let acc = 0, last = 0;
  function overView(target) {
    for (const id of VIEWS) {
      const el = document.getElementById(id);
      if (el && el.contains(target)) return true;
    }
    return false;
  }
  document.addEventListener("wheel", function (e) {
    if (e.ctrlKey || !overView(e.target)) return;
    e.preventDefault();  // the page must not scroll under the pointer
    acc += e.deltaMode === 1 ? e.deltaY * 40 : e.deltaY;
    const now = Date.now();
    if (Math.abs(acc) < 50 || now - last < 60) return;
    last = now;
    const id = acc > 0 ? "po-next" : "po-prev";
    acc = 0;
    window.__poWheelSteps = (window.__poWheelSteps || 0) + 1;  // read by the browser tests
    press(id);
  }, { passive: false, capture: true });
})();
