"""Helpers shared by the UI tests (imported by name; pytest puts tests/ui on sys.path)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _load_make_assets():
    spec = importlib.util.spec_from_file_location("make_assets", REPO / "scripts" / "make_assets.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_assets", mod)
    spec.loader.exec_module(mod)
    return mod


#: scripts/make_assets.py as a module (ct_phantom, xray_image, write_ct, write_xrays).
make_assets = _load_make_assets()


def real_models_available() -> bool:
    """True when LiteMedSAM and MobileSAM load on this host (checked through the registry).

    ``PROMPTONCE_UI_TEST_MODEL=fake`` forces False (browser tests then use the fake backend).
    """
    if os.environ.get("PROMPTONCE_UI_TEST_MODEL", "") == "fake":
        return False
    try:
        from promptonce.backends.registry import available_backends
    except ImportError:
        return False
    ok = {info.name for info, available, _ in available_backends() if available}
    return {"litemedsam", "mobilesam"} <= ok
