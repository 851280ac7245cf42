// PromptOnce keyboard shortcuts (outside text fields): arrows step slices/images, p/n/b pick the
// click mode, u undoes. They click the page's own buttons, so they go through the same handlers.
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
    }
    if (done) e.preventDefault();
  });
})();
