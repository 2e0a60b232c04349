"""The storage interface every code store implements (the station's CodeStore today,
the network archive later), and the defaults built from its primitives.

Data model. A store holds *windows*: each is one fixed-width binary code (``bits``
bits, packed MSB-first into ``ceil(bits / 8)`` bytes, numpy.packbits order) plus its
metadata, a ``Window`` (recording, offset in it, length, capture time in UTC epoch
seconds, clock source). Windows arrive in order and are described by ``Segment``s: n
consecutive windows of one recording on a regular hop. Every code in a store was made
by one bundle, named by its ``fingerprint``; codes of another bundle or width are
refused (FingerprintMismatch). A recording is identified by ``(path, content_hash)``.
A search returns, per query, the k windows nearest in Hamming distance as ``Hit``s
(a Window plus ``distance``), nearest first, ties broken by insertion order;
``since``/``until`` keep windows whose capture time lies in [since, until),
``station`` keeps windows of one station or several. A batch appended with a ``tag``
is applied at most once. Implementations may buffer appends; ``flush`` makes
everything appended so far durable and visible to searches.

Primitives (abstract): ``bits``, ``fingerprint`` (attributes), ``__len__``, ``search``,
``append``, ``flush``, ``has_tag``, ``has_recording``, ``stats``, ``close``.
Defaults built from them: ``search_one``, ``describe`` and the context manager. An
implementation may override a default with a faster one that returns the same answer
(the contract tests in tests/store_contract.py check every implementation against the
same independent reference).
"""

from __future__ import annotations

import abc

import numpy as np

from ..errors import InvalidArgument
from .records import Hit


class CodeStorage(abc.ABC):
    """Codes of one bundle fingerprint plus their windows' metadata (see module docstring).

    ``bits`` (int) and ``fingerprint`` (str) are attributes of every open store.
    """

    bits: int
    fingerprint: str

    # ------------------------------------------------------------------ primitives
    @abc.abstractmethod
    def __len__(self) -> int:
        """Searchable windows (committed, not removed)."""

    @abc.abstractmethod
    def search(self, queries, k: int, *, since=None, until=None, station=None,
               recording=None, fingerprint: str | None = None,
               threads: int = 0) -> list[list[Hit]]:
        """The k nearest windows to each query code (uint8 (nq, nbytes) or (nbytes,))."""

    @abc.abstractmethod
    def append(self, codes, windows, *, tag: str | None = None,
               fingerprint: str | None = None, commit: bool = False) -> range:
        """Add codes (uint8 (n, nbytes)) and their windows (a Segment, Segments or n
        Windows); return the row numbers they got. A store that cannot be written
        raises StoreError."""

    @abc.abstractmethod
    def flush(self) -> int:
        """Make every appended window durable and searchable; return how many are."""

    @abc.abstractmethod
    def has_tag(self, tag: str) -> bool:
        """Whether a batch appended with this tag was committed."""

    @abc.abstractmethod
    def has_recording(self, path: str, content_hash: str = "") -> bool:
        """Whether committed windows of this recording exist."""

    @abc.abstractmethod
    def stats(self) -> dict:
        """At least: rows, segments, recordings, bits, fingerprint, first_capture_utc,
        last_capture_end_utc, stations ({station: windows})."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush what is buffered and release the store."""

    # ------------------------------------------------------------------ defaults
    def search_one(self, query, k: int, **filters) -> list[Hit]:
        """The k nearest windows to one query code."""
        q = np.asarray(query)
        if q.ndim != 1:
            raise InvalidArgument(f"search_one takes one code (nbytes,), got shape {q.shape}")
        return self.search(q[None, :], k, **filters)[0]

    def describe(self) -> str:
        """One line: windows, width and fingerprint."""
        return f"{len(self)} windows of {self.bits}-bit codes (fingerprint {self.fingerprint})"

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
