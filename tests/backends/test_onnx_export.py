"""The ONNX export command line (promptonce.backends.onnx_export) and the backends' import graph."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import promptonce.backends as backends_pkg
from promptonce.backends import onnx_export

BACKENDS = Path(backends_pkg.__file__).parent


def _imports(path: Path) -> set[str]:
    """Module names a backend module imports (relative names resolved inside promptonce.backends)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module is None:
                names.update(a.name for a in node.names)
            elif node.level == 1:
                names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_the_backends_import_graph_has_no_circle() -> None:
    graph = {p.stem: _imports(p) & {q.stem for q in BACKENDS.glob("*.py")} for p in BACKENDS.glob("*.py")}
    assert "litemedsam" not in graph["_onnx"] and "mobilesam" not in graph["_onnx"]

    def reach(start: str, seen: set[str]) -> set[str]:
        for nxt in graph.get(start, ()):
            if nxt not in seen:
                seen.add(nxt)
                reach(nxt, seen)
        return seen

    circles = [m for m in graph if m in reach(m, set())]
    assert not circles, f"import circles through {circles}"


def test_export_command_runs_the_models_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    from promptonce.backends import litemedsam, mobilesam

    calls: list[str] = []
    monkeypatch.setattr(litemedsam, "export_onnx", lambda: calls.append("litemedsam") or True)
    monkeypatch.setattr(mobilesam, "export_onnx", lambda: calls.append("mobilesam") or False)
    assert onnx_export.main(["export", "litemedsam"]) == 0
    assert onnx_export.main(["export", "mobilesam"]) == 1  # a failed export: exit 1, the backend stays on PyTorch
    assert calls == ["litemedsam", "mobilesam"]
    with pytest.raises(SystemExit) as exc:
        onnx_export.main(["export", "sam_vit_b"])
    assert exc.value.code == 2
    with pytest.raises(ValueError, match="No ONNX export"):
        onnx_export.export("sam_vit_b")


def test_the_export_child_is_the_new_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from promptonce.backends import _onnx

    seen: list[list[str]] = []

    def fake_run(cmd, **kwargs):  # noqa: ANN001, ANN003
        seen.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert _onnx.export_in_subprocess("litemedsam")
    assert seen[0][1:] == ["-m", "promptonce.backends.onnx_export", "export", "litemedsam"]
