"""The PromptOnce exception tree.

Every error the library raises on purpose is a :class:`PromptOnceError`; its message says what was
wrong and what to do about it. The CLI turns :class:`InputError` into exit code 2 and the web app
shows any :class:`PromptOnceError` message to the user (never a stack trace)::

    PromptOnceError
    ├── InputError                  the user's data or request is wrong (CLI exit code 2)
    │   ├── UnsupportedFormatError  no reader knows this file; lists the formats that are known
    │   ├── CorruptFileError        empty, truncated or undecodable file
    │   ├── DimensionError          wrong number of dimensions (1D, 4D without a time point, ...)
    │   ├── InvalidValuesError      NaN / inf voxels, NaN affine
    │   ├── TooLargeError           over the voxel or byte budget, refused before allocating
    │   ├── ReferenceMismatchError  a reference mask whose shape or geometry differs from its image
    │   └── PromptError             a prompt outside the image, empty, or unusable by the model
    ├── ModelError                  a model cannot be built or run
    │   ├── ModelUnavailableError   package, device or weights missing on this host (says why)
    │   └── WeightsError            checkpoint missing, corrupt, checksum mismatch, download failed
    └── CancelledError              a run was cancelled by the caller; results so far are kept
"""

from __future__ import annotations

import threading  # noqa: F401 - used in annotations

__all__ = [
    "PromptOnceError",
    "InputError",
    "UnsupportedFormatError",
    "CorruptFileError",
    "DimensionError",
    "InvalidValuesError",
    "TooLargeError",
    "ReferenceMismatchError",
    "PromptError",
    "ModelError",
    "ModelUnavailableError",
    "WeightsError",
    "CancelledError",
]


class PromptOnceError(Exception):
    """Base of every error PromptOnce raises on purpose. The message is meant for the user."""


class InputError(PromptOnceError):
    """The user's input (a file, a prompt, an option) is wrong. The CLI exits with code 2."""


class UnsupportedFormatError(InputError):
    """No reader recognises the file."""


class CorruptFileError(InputError):
    """The file is empty, truncated or cannot be decoded."""


class DimensionError(InputError):
    """The data has a number of dimensions PromptOnce cannot segment."""


class InvalidValuesError(InputError):
    """The data holds NaN or infinite values, or its geometry is not finite."""


class TooLargeError(InputError):
    """The data exceeds the configured size budget; refused before allocating it."""


class ReferenceMismatchError(InputError):
    """A reference mask does not match its image in shape or geometry."""


class PromptError(InputError):
    """A prompt is empty, outside the image, or of a kind the chosen model cannot take."""


class ModelError(PromptOnceError):
    """A model cannot be built or run."""


class ModelUnavailableError(ModelError):
    """A model is not available on this host (missing package, device or weights)."""


class WeightsError(ModelError):
    """A checkpoint is missing, corrupt, fails its checksum, or could not be downloaded."""


class CancelledError(PromptOnceError):
    """The caller cancelled a run; the results produced so far remain valid."""


def check_cancel(cancel: "threading.Event | None") -> None:
    """Raises :class:`CancelledError` when ``cancel`` is set (the one cancel check of the package).

    Args:
        cancel: a ``threading.Event`` (or anything with ``is_set()``), or None for "never cancelled".
    """
    if cancel is not None and cancel.is_set():
        raise CancelledError("The run was cancelled; the results finished so far are kept.")

