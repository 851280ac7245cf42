"""Importing the package (and its io layer) loads neither torch nor gradio."""

from __future__ import annotations

import subprocess
import sys


def _loaded_after(code: str) -> list[str]:
    probe = code + "\nimport sys\nprint(','.join(m for m in ('torch', 'gradio', 'highdicom') if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_import_promptonce_loads_no_torch_or_gradio():
    assert _loaded_after("import promptonce") == []


def test_io_layer_loads_no_torch_or_gradio():
    loaded = _loaded_after(
        "import promptonce.io.readers, promptonce.io.writers\n"
        "import numpy as np, tempfile, pathlib\n"
        "from promptonce.io.readers import load\n"
        "p = pathlib.Path(tempfile.mkdtemp()) / 'a.npy'\n"
        "np.save(p, np.zeros((2, 3, 3)))\n"
        "load(p)\n"
    )
    assert "torch" not in loaded and "gradio" not in loaded
    assert "highdicom" not in loaded  # only imported by write_dicom_seg
