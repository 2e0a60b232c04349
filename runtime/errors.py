"""The project's exceptions.

Each one also subclasses the builtin a caller would expect (pynacl style), so
``except ValueError`` keeps working, while ``except CvahashError`` catches all of ours.
Messages say what failed, where, and what to do about it.
"""


class CvahashError(Exception):
    """Base class of every error cvahash raises on purpose."""


class InvalidCodes(ValueError, CvahashError):
    """Codes or queries of the wrong dtype, shape, width or layout."""


class InvalidArgument(ValueError, CvahashError):
    """A parameter outside its allowed range (k < 1, radius < 0, ...)."""


class StoreError(CvahashError):
    """A code store could not be opened, read or written."""


class StoreCorrupt(StoreError):
    """A code store's files are damaged beyond automatic recovery."""


class FingerprintMismatch(StoreError, ValueError):
    """Codes, queries or updates made with another model bundle (or bit width)."""


class BundleError(CvahashError):
    """A model bundle is missing, incomplete, tampered with, or of an unknown format."""


class AudioError(CvahashError):
    """An audio file could not be read or is unusable (empty, corrupt, NaN samples...)."""


class ConfigError(ValueError, CvahashError):
    """A device config file is missing a key, has a wrong type, or an unknown key."""


class UpdateRejected(CvahashError):
    """An SD-card update package failed verification and was not applied."""


class MissingExtra(ImportError, CvahashError):
    """A workstation command was run without the optional dependencies it needs."""
