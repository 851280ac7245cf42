"""Backend names -> lazy builders, availability (and why not), one cached instance per process.

Built in: ``litemedsam`` (boxes, medical), ``mobilesam`` (clicks and boxes) and ``fake`` (plumbing
tests, not a model). SAM and SAM 2 backends live in optional modules (``promptonce.backends.sam``,
``promptonce.backends.sam2``): when such a module exists it is imported the first time the registry is
asked for names, and it adds its backends by defining ``register_all(register)`` (or
``register_backends(register)``), which is then called with :func:`register`, or by calling
:func:`register` itself at import time. When it is missing or fails to import, its
usual names (``sam_vit_b/l/h``, ``sam2.1_hiera_t/s/b+/l``) are still listed, as unavailable, with the
reason.

``get_backend("auto")`` picks ``litemedsam`` (the medical box model; the engine pairs it with
``mobilesam`` to turn clicks into boxes), else ``mobilesam``, else raises
:class:`~promptonce.errors.ModelUnavailableError` with the reasons. It never falls back to ``fake``.

Models are loaded on first use and kept: one instance per ``(name, device, kwargs)`` per process,
built once even when several threads ask at the same time.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InputError, ModelUnavailableError
from .base import Backend, BackendInfo

__all__ = ["register", "available_backends", "get_backend", "backend_names", "clear_cache", "AUTO_ORDER"]

logger = logging.getLogger(__name__)

AUTO_ORDER: tuple[str, ...] = ("litemedsam", "mobilesam")
"""What ``"auto"`` resolves to: the first available of these."""

_ALIASES = {
    "lite_medsam": "litemedsam",
    "medsam_lite": "litemedsam",
    "medsam-lite": "litemedsam",
    "lite-medsam": "litemedsam",
    "mobile_sam": "mobilesam",
    "mobile-sam": "mobilesam",
}

# Names an optional module is expected to provide, listed (as unavailable) when it is absent.
_PLUGINS: dict[str, tuple[BackendInfo, ...]] = {
    "promptonce.backends.sam": tuple(
        BackendInfo(name=f"sam_vit_{v}", title=f"SAM ViT-{v.upper()}", points=True, boxes=True, input_size=1024)
        for v in ("b", "l", "h")
    ),
    "promptonce.backends.sam2": tuple(
        BackendInfo(
            name=f"sam2.1_hiera_{v}", title=f"SAM 2.1 Hiera-{v.upper()}", points=True, boxes=True,
            input_size=1024, sequence=True,
        )
        for v in ("t", "s", "b+", "l")
    ),
}


@dataclass
class _Entry:
    info: BackendInfo
    builder: Callable[..., Any]
    check: Callable[[], str | None] | None
    uses_device: bool


_LOCK = threading.RLock()
_ENTRIES: dict[str, _Entry] = {}
_INSTANCES: dict[tuple[Any, ...], Any] = {}
_BUILD_LOCKS: dict[tuple[Any, ...], threading.Lock] = {}
_PLUGINS_LOADED = False
_HOOKS = ("register_backends", "register_all")


def register(
    name: str,
    builder: Callable[..., Backend],
    info: BackendInfo,
    check: Callable[[], str | None] | None = None,
    *,
    uses_device: bool = True,
) -> None:
    """Adds (or replaces) a backend.

    Args:
        name: the name users pass (``--model NAME``); lower case.
        builder: called as ``builder(device=DEVICE, **kwargs)`` the first time the backend is needed;
            DEVICE is ``"cpu"``, ``"cuda"``... (None resolved: CUDA when visible, else CPU).
        info: what the backend can do (shown before it is built).
        check: cheap availability test (no model loading): None when usable, else a reason telling
            the user what is missing and how to get it.
        uses_device: False for backends that ignore the device (no torch import to resolve it).
    """
    key = name.strip().lower()
    with _LOCK:
        _ENTRIES[key] = _Entry(info=info, builder=builder, check=check, uses_device=uses_device)


def _register_builtins() -> None:
    from . import fake, litemedsam, mobilesam

    def build_fake(device: str | None = None, **kwargs: Any) -> Backend:
        return fake.FakeBackend(**kwargs)

    def build_litemedsam(device: str | None = None, **kwargs: Any) -> Backend:
        return litemedsam.LiteMedSAMBackend(device=device, **kwargs)

    def build_mobilesam(device: str | None = None, **kwargs: Any) -> Backend:
        return mobilesam.MobileSAMBackend(device=device, **kwargs)

    register("litemedsam", build_litemedsam, litemedsam.INFO, litemedsam.check_available)
    register("mobilesam", build_mobilesam, mobilesam.INFO, mobilesam.check_available)
    register("fake", build_fake, fake.INFO, None, uses_device=False)


def _unavailable(reason: str) -> Callable[[], str]:
    return lambda: reason


def _never_built(device: str | None = None, **kwargs: Any) -> Backend:
    raise ModelUnavailableError("This backend's module is not available in this installation.")


def _load_plugins() -> None:
    global _PLUGINS_LOADED
    with _LOCK:
        if _PLUGINS_LOADED:
            return
        _PLUGINS_LOADED = True
        for module_name, expected in _PLUGINS.items():
            reason: str | None = None
            try:
                spec = importlib.util.find_spec(module_name)
            except (ImportError, ValueError) as exc:
                spec, reason = None, f"{module_name} cannot be found ({exc})"
            if spec is None:
                reason = reason or f"{module_name} is not part of this installation"
            else:
                try:
                    module = importlib.import_module(module_name)
                    for hook_name in _HOOKS:
                        hook = getattr(module, hook_name, None)
                        if callable(hook):
                            hook(register)
                            break
                except Exception as exc:  # noqa: BLE001 - a broken optional module must not break the registry
                    logger.warning("optional backend module %s failed to load: %s", module_name, exc)
                    reason = f"{module_name} failed to import: {exc}"
            if reason is not None:
                for info in expected:
                    if info.name not in _ENTRIES:
                        register(info.name, _never_built, info, _unavailable(reason), uses_device=False)


def _ensure_loaded() -> None:
    with _LOCK:
        if "fake" not in _ENTRIES:
            _register_builtins()
    _load_plugins()


def backend_names() -> list[str]:
    """All registered names (available or not), in registration order."""
    _ensure_loaded()
    with _LOCK:
        return list(_ENTRIES)


def _reason(entry: _Entry) -> str | None:
    if entry.check is None:
        return None
    try:
        return entry.check()
    except Exception as exc:  # noqa: BLE001 - a failing check means "unavailable", with the reason
        return f"availability check failed: {exc}"


def available_backends() -> list[tuple[BackendInfo, bool, str]]:
    """Every known backend with ``(info, available, why_not)``; cheap: loads no model.

    ``why_not`` is ``""`` when available, else what is missing and how to get it (e.g. "torch is not
    installed (pip install -r requirements.txt)").
    """
    _ensure_loaded()
    with _LOCK:
        entries = list(_ENTRIES.values())
    out = []
    for e in entries:
        r = _reason(e)
        out.append((e.info, r is None, r or ""))
    return out


def _resolve_auto() -> str:
    reasons = []
    for name in AUTO_ORDER:
        with _LOCK:
            entry = _ENTRIES.get(name)
        if entry is None:
            continue
        r = _reason(entry)
        if r is None:
            return name
        reasons.append(f"{name}: {r}")
    raise ModelUnavailableError("No model is available for 'auto': " + "; ".join(reasons))


def _freeze(kwargs: dict[str, Any]) -> tuple[Any, ...]:
    items = tuple(sorted(kwargs.items()))
    try:
        hash(items)
    except TypeError:
        return tuple((k, repr(v)) for k, v in items)
    return items


def get_backend(name: str = "auto", *, device: str | None = None, **kwargs: Any) -> Backend:
    """Returns the backend ``name``, building it on first use and caching it for the process.

    Args:
        name: a registered name, an alias (``lite_medsam``, ``mobile_sam``) or ``"auto"`` (module doc).
        device: ``"cpu"``, ``"cuda"``... None: CUDA when visible, else CPU.
        **kwargs: passed to the backend's constructor (e.g. ``runtime="torch"`` for LiteMedSAM); each
            distinct set makes a distinct instance.

    Raises:
        InputError: unknown name (the message lists the known ones).
        ModelUnavailableError: the backend cannot run here (the message says why).
        WeightsError: its checkpoint is missing or corrupt.
    """
    _ensure_loaded()
    key_name = _ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if key_name == "auto":
        key_name = _resolve_auto()
    with _LOCK:
        entry = _ENTRIES.get(key_name)
        known = list(_ENTRIES)
    if entry is None:
        raise InputError(f"Unknown model {name!r}; known models: auto, {', '.join(known)}.")
    why = _reason(entry)
    if why is not None:
        raise ModelUnavailableError(f"Model {key_name!r} ({entry.info.title}) is unavailable here: {why}.")
    if entry.uses_device:
        from . import _torchutil

        dev = _torchutil.resolve_device_light(device)
    else:
        dev = "cpu"
    key = (key_name, dev, _freeze(kwargs))
    with _LOCK:
        inst = _INSTANCES.get(key)
        if inst is not None:
            return inst
        build_lock = _BUILD_LOCKS.setdefault(key, threading.Lock())
    with build_lock:
        with _LOCK:
            inst = _INSTANCES.get(key)
        if inst is None:
            logger.info("building backend %s on %s", key_name, dev)
            inst = entry.builder(device=dev, **kwargs)
            with _LOCK:
                _INSTANCES[key] = inst
    return inst


def clear_cache() -> None:
    """Drops every cached backend instance (their models are freed when no one else holds them)."""
    with _LOCK:
        _INSTANCES.clear()
        _BUILD_LOCKS.clear()
