"""Checkpoints from the Hugging Face model hub: the preloaded copy, or a verified download.

SAM 2 and SAM 2.1 checkpoints are published on the hub by their authors (``facebook/sam2.1-hiera-tiny``
and so on, the files named as on the authors' download site). :mod:`promptonce.backends.weights`
asks this module between its own cache and the authors' URL:

1. :func:`cached_file`: the file in the hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``), where a Space's ``preload_from_hub`` puts it at build time, or an
   earlier ``hf_hub_download``. No network.
2. :func:`download`: ``huggingface_hub.hf_hub_download`` at the pinned revision into a staging folder
   inside PromptOnce's cache (``huggingface_hub`` writes ``.incomplete`` files there and resumes
   them), then the caller's check (size and sha256 from PromptOnce's own table) and only then an
   atomic move to the final name. A file that fails the check is deleted; nothing half-written ever
   sits under the final name.

``HF_ENDPOINT`` (a mirror, or the fake hub of the tests) is read at call time; ``HF_HUB_OFFLINE=1``
stops downloads as ``PROMPTONCE_OFFLINE=1`` does. ``huggingface_hub`` is optional (Gradio brings it):
without it this source is skipped.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import WeightsError

__all__ = ["available", "hub_cache_dir", "offline", "cached_file", "download", "STAGING"]

logger = logging.getLogger(__name__)

STAGING = ".hub-staging"
"""Sub-folder of the destination folder where hub downloads are staged before their check."""

_ETAG_TIMEOUT_S = 15.0


def available() -> bool:
    """True when ``huggingface_hub`` is installed."""
    return importlib.util.find_spec("huggingface_hub") is not None


def offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` forbids hub downloads."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache_dir() -> Path:
    """The hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    env = os.environ.get("HF_HUB_CACHE", "").strip()
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME", "").strip()
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "huggingface"
    return base / "hub"


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or None


def cached_file(repo_id: str, filename: str, revision: str) -> Path | None:
    """The hub cache's copy of ``repo_id/filename`` at ``revision`` (e.g. preloaded), or None. No network."""
    if not available():
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir(), revision=revision)
    except (OSError, ValueError) as e:  # an unreadable cache, a malformed name
        logger.debug("hub cache lookup of %s/%s failed: %s", repo_id, filename, e)
        return None
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _quiet_tqdm() -> Any:
    """A tqdm class that never draws (the library logs; it does not print progress bars)."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class Quiet(hf_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Quiet


def download(
    repo_id: str,
    filename: str,
    revision: str,
    dest: Path,
    check: Callable[[Path], object],
) -> Path:
    """Downloads ``repo_id/filename`` at ``revision`` and moves it to ``dest`` once ``check`` passed.

    Args:
        repo_id: the hub repository, e.g. ``"facebook/sam2.1-hiera-tiny"``.
        filename: the file in it, e.g. ``"sam2.1_hiera_tiny.pt"``.
        revision: a commit hash (pinned) or a branch.
        dest: the final path (its folder is created).
        check: raises :class:`~promptonce.errors.WeightsError` when the downloaded file is not the
            expected one (size, sha256).

    Returns:
        ``dest``.

    Raises:
        WeightsError: ``huggingface_hub`` is missing, the hub (or ``HF_ENDPOINT``) cannot be
            reached, the repository, revision or file does not exist there, the transfer broke (its
            ``.incomplete`` file stays in the staging folder and is resumed next time), or the file
            failed ``check`` (it is deleted).
    """
    if not available():
        raise WeightsError("huggingface_hub is not installed (pip install -r requirements.txt).")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    staging = dest.parent / STAGING
    where = f"{_endpoint() or 'the Hugging Face hub'} ({repo_id}@{revision}/{filename})"
    try:
        staging.mkdir(parents=True, exist_ok=True)
        got = Path(
            hf_hub_download(
                repo_id, filename, revision=revision, local_dir=staging, endpoint=_endpoint(),
                etag_timeout=_ETAG_TIMEOUT_S, tqdm_class=_quiet_tqdm(),
            )
        )
    except (HfHubHTTPError, LocalEntryNotFoundError) as e:
        code = getattr(getattr(e, "response", None), "status_code", None)
        why = f"HTTP {code}: {type(e).__name__}" if code else type(e).__name__
        raise WeightsError(f"Downloading from {where} failed: {why}. {str(e).splitlines()[0][:200]}") from e
    except Exception as e:  # noqa: BLE001 - network, proxy and metadata errors of the hub client
        raise WeightsError(f"Downloading from {where} failed: {type(e).__name__}: {str(e)[:200]}") from e
    try:
        check(got)
    except WeightsError:
        got.unlink(missing_ok=True)
        raise
    os.replace(got, dest)
    logger.info("saved %s from %s", dest, where)
    return dest
