"""The model bundle on the device: verify it, load it, turn text and log-mel into codes.

A bundle is a directory written by ``cvahash export`` (docs/bundle.md):

    manifest.json   format version, bits, source model, front-end parameters, tokenizer
                    settings, precision, sha256 and size of every file, fingerprint
    text.onnx       input_ids, attention_mask (int64 [batch, seq]) -> logits float32 [batch, bits]
    audio.onnx      input_features float32 [batch, 1, frames, mels] -> logits float32 [batch, bits]
    tokenizer.json  a ``tokenizers`` file; padding and truncation come from the manifest

`ModelBundle.open` checks the format version, the files and the fingerprint
(`cvahash.model.integrity`) and the manifest's bounds (`cvahash.model.manifest`) *before*
anything is loaded, and raises `BundleError` naming the file otherwise; a graph's file
is hashed before that graph is first loaded.
ONNX Runtime sessions are created lazily: a search only loads the text graph, indexing
only the audio graph. This module needs numpy, onnxruntime and tokenizers only; it never
imports torch or transformers.

Codes: bit i is 1 where logit i > 0, packed MSB-first per byte (``numpy.packbits``),
``ceil(bits / 8)`` bytes per row (docs/architecture.md, file contracts).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError, InvalidArgument
from . import mapped, tokenindex
from .frontend import FrontendParams
from .integrity import (
    AUDIO_GRAPH,
    BUNDLE_FILES,
    FORMAT_VERSION,
    GRAPH_FILES,
    MANIFEST_NAME,
    TEXT_GRAPH,
    TOKENIZER_FILE,
    check_bundle,
    check_digest,
    files_for,
    fingerprint_of,
    sha256_file,
)
from .manifest import check_graph

__all__ = [
    "BUNDLE_FILES",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "ModelBundle",
    "TokenizedText",
    "check_bundle",
    "fingerprint_of",
    "pack_codes",
    "sha256_file",
]

log = logging.getLogger(__name__)

DEFAULT_AUDIO_BATCH = 8
# With threads=0 ("one per core") at most this many windows run at once: each holds its
# own activations (about 30 MB for the full-size HTSAT), which adds up on a big workstation.
MAX_AUTO_AUDIO_WORKERS = 8
# Text queries whose logits a bundle remembers (a few hundred bytes each).
TEXT_MEMO = 256


# ---------------------------------------------------------------- codes


def pack_codes(logits: np.ndarray) -> np.ndarray:
    """Logits [n, bits] -> packed codes uint8 [n, ceil(bits/8)]: bit i = logit i > 0, MSB first."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise InvalidArgument(f"pack_codes: logits must be 2-D [n, bits], got shape {logits.shape}")
    return np.ascontiguousarray(np.packbits(logits > 0, axis=1))


# ---------------------------------------------------------------- the bundle


@dataclass(frozen=True)
class TokenizedText:
    """Token ids and mask (int64 [n, seq]) as the text graph takes them, and which texts
    were cut to the bundle's ``max_length`` (bool [n])."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    truncated: np.ndarray


class ModelBundle:
    """A verified model bundle; turns text and log-mel spectrograms into packed codes.

    Use `ModelBundle.open`. Thread-safe: sessions are created once under a lock and
    ONNX Runtime sessions may be run from several threads.
    """

    def __init__(self, root: Path, manifest: dict, *, threads: int, providers,
                 hashed: set[str] | None = None):
        self.path = root
        self._manifest = manifest
        # Files whose sha256 was checked at open (None: all); the rest are checked
        # before their graph is loaded.
        self._unverified = set() if hashed is None else set(manifest["files"]) - hashed
        self._threads = threads
        self._providers = list(providers) if providers else None
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._tokenizer = None
        self._text_memo: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._memo_lock = threading.Lock()
        self._audio_workers = 1  # windows run at once; set when the audio session is made
        self._pool = None
        self.providers_in_use: dict[str, list[str]] = {}
        # Set before the text graph is first used to trade speed for memory: ORT then
        # keeps the int8 weights as stored instead of adding a pre-packed copy (the
        # full-size int8 text graph: about 55 MB less RSS, text encoding about 1.25x
        # slower). `cvahash serve` sets it; a long-running page encodes little text.
        self.save_memory = False
        # Set before the text graph is first used by a process that encodes a query or
        # two (`cvahash search`): the int8 weights are then used as mapped instead of
        # being packed for this CPU's kernels when the session is created, and ORT's
        # threads do not spin between operators. On the full-size graph that saves about
        # 100 CPU-ms of cold start and costs a few ms per later query (docs/benchmarks/
        # runtime.md, run 8); the codes are the same.
        self.one_shot_text = False

        try:
            self._frontend = FrontendParams.from_dict(manifest["frontend"])
        except (InvalidArgument, TypeError) as exc:
            raise BundleError(f"{root / MANIFEST_NAME}: key 'frontend': {exc}") from exc
        tok = manifest["tokenizer"]
        if not isinstance(tok, dict) or not isinstance(tok.get("max_length"), int):
            raise BundleError(f"{root / MANIFEST_NAME}: key 'tokenizer' needs an integer "
                              "'max_length'")

    @classmethod
    def open(cls, path: str | Path, *, threads: int = 0,
             providers: Sequence[str] | None = None, graphs=None) -> ModelBundle:
        """Verify the bundle at ``path`` (format, sha256 of its files, fingerprint) and
        return it; no graph is loaded yet.

        ``threads``: ONNX Runtime intra-op threads (0 = its default, one per core).
        ``providers``: execution providers in order of preference, e.g.
        ``["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]``;
        those not available in this onnxruntime build are dropped (CPU is always the
        last resort). None means CPU only.
        ``graphs``: the graphs the caller will use, e.g. ``("text",)`` for a search: only
        their files are hashed now, any other file just before its graph is first loaded
        (None: hash every file now). Digests of unchanged files are reused
        (`cvahash.model.verified`), so a second cold start reads no graph twice.
        """
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise InvalidArgument(f"threads must be an integer >= 0, got {threads!r}")
        root = Path(path)
        manifest = check_bundle(root, graphs=graphs, cache=True)
        return cls(root, manifest, threads=threads, providers=providers,
                   hashed=files_for(graphs))

    def _verify_for(self, branch: str) -> None:
        """Hash the files ``branch`` needs if `open` did not (under ``self._lock``)."""
        for name in GRAPH_FILES[branch]:
            if name in self._unverified:
                if check_digest(self.path, name, self._manifest["files"][name], cache=True) \
                        and name.endswith(".onnx"):
                    check_graph(self.path / name, self.path.resolve(), self.bits)
                self._unverified.discard(name)

    # -- what the bundle is
    @property
    def manifest(self) -> dict:
        """A copy of manifest.json as a dict."""
        return json.loads(json.dumps(self._manifest))

    @property
    def bits(self) -> int:
        return int(self._manifest["bits"])

    @property
    def nbytes(self) -> int:
        """Bytes per packed code: ceil(bits / 8)."""
        return math.ceil(self.bits / 8)

    @property
    def fingerprint(self) -> str:
        return str(self._manifest["fingerprint"])

    @property
    def frontend_params(self):
        """The `cvahash.model.frontend.FrontendParams` the model was trained with."""
        return self._frontend

    @property
    def precision(self) -> str:
        return str(self._manifest["precision"])

    def __repr__(self) -> str:
        return (f"ModelBundle({str(self.path)!r}, bits={self.bits}, "
                f"fingerprint={self.fingerprint!r}, precision={self.precision!r})")

    # -- sessions
    def _choose_providers(self) -> list[str]:
        import onnxruntime as ort  # lazy: `info` and --help stay fast

        available = set(ort.get_available_providers())
        wanted = self._providers or ["CPUExecutionProvider"]
        chosen = [p for p in wanted if p in available]
        if "CPUExecutionProvider" not in chosen:
            chosen.append("CPUExecutionProvider")
        return chosen

    def _session(self, branch: str):
        with self._lock:
            if branch in self._sessions:
                return self._sessions[branch]

            self._verify_for(branch)
            name = TEXT_GRAPH if branch == "text" else AUDIO_GRAPH
            providers = self._choose_providers()
            threads = self._threads
            if branch == "audio":
                self._audio_workers = self._parallel_windows(providers)
                if self._audio_workers > 1:
                    threads = 1
            session = None
            if branch == "text" and self._mappable(providers):
                session = self._mapped_text_session(threads, providers)
            if session is None:
                session = self._new_session(self.path / name,
                                            self._options(branch, threads), providers)
            used = session.get_providers()
            self.providers_in_use[branch] = used
            if branch == "audio" and self._audio_workers > 1:
                log.info("bundle %s: audio graph on %s (%d windows at once, 1 thread each)",
                         self.fingerprint, used[0], self._audio_workers)
            else:
                log.info("bundle %s: %s graph on %s (%s threads)", self.fingerprint, branch,
                         used[0], threads or "default")
            self._sessions[branch] = session
            return session

    def _options(self, branch: str, threads: int, level=None, pack: bool | None = None):
        """Session options for ``branch``; ``level``: an optimisation level instead of the
        one the bundle asks for (`_ort_level`); ``pack``: whether ONNX Runtime pre-packs
        the text graph's weights (None: unless `save_memory` or `one_shot_text`)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # ORT's own warnings are noise on a station
        if pack is None:
            pack = not (self.save_memory or self.one_shot_text)
        if branch == "text" and not pack:
            options.add_session_config_entry("session.disable_prepacking", "1")
        if branch == "text" and self.one_shot_text:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        level = self._ort_level(branch) if level is None else level
        if level is not None:
            options.graph_optimization_level = level
        return options

    def _new_session(self, path: Path, options, providers):
        import onnxruntime as ort

        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"{path}: onnxruntime cannot load it ({exc})") from exc

    # -- the text graph's mapped copy (cvahash.model.mapped)
    def _mappable(self, providers: list[str]) -> bool:
        """Whether the text graph may run from a mapped copy: the CPU provider only, and
        a graph the exporter saved with the hardware-independent optimisations applied."""
        graphs = self._manifest.get("graphs")
        entry = graphs.get("text") if isinstance(graphs, dict) else None
        return (providers == ["CPUExecutionProvider"] and isinstance(entry, dict)
                and entry.get("ort_optimized") == "extended")

    def _mapped_text_session(self, threads: int, providers):
        """The text session from the mapped copy of text.onnx; when there is none yet,
        the session from text.onnx itself, with the copy written on the way and kept if it
        gives the same logits. None: load text.onnx as usual."""
        import onnxruntime as ort

        unoptimised = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        digest = str(self._manifest["files"][TEXT_GRAPH]["sha256"]).lower()
        found = mapped.find(digest, ort.__version__)
        if found is not None:
            try:  # the copy carries the optimisations already
                return ort.InferenceSession(str(found), providers=providers,
                                            sess_options=self._options("text", threads,
                                                                       unoptimised))
            except Exception as exc:  # a damaged copy: make it again
                log.warning("mapped copy %s of %s not usable (%s); loading the bundle's",
                            found, self.path / TEXT_GRAPH, exc)
                mapped.discard(found.parent)
        staging = mapped.staging_folder()
        if staging is None:
            return None
        options = self._options("text", threads)
        mapped.save_options(options, staging)
        try:
            session = ort.InferenceSession(str(self.path / TEXT_GRAPH), sess_options=options,
                                           providers=providers)
        except Exception as exc:  # e.g. a full disk under the cache: load it without
            log.debug("mapped copy of %s not written (%s)", self.path / TEXT_GRAPH, exc)
            mapped.discard(staging)
            return None
        try:
            copy_options = self._options("text", threads, unoptimised, pack=False)
            same = self._same_logits(session, staging / mapped.GRAPH, copy_options, providers)
        except Exception as exc:  # a copy that fails in any way: dropped
            log.debug("mapped copy of %s not kept (%s)", self.path / TEXT_GRAPH, exc)
            same = False
        if same:
            mapped.publish(staging, digest, ort.__version__)
        else:
            mapped.discard(staging)
        return session

    def _same_logits(self, session, copy: Path, options, providers) -> bool:
        """Whether the graph at ``copy`` (run unoptimised, weights not pre-packed) gives
        bit-identical logits to ``session`` on probe queries of several lengths, one
        at a time and as one padded batch."""
        import onnxruntime as ort

        if not copy.is_file():
            return False
        other = ort.InferenceSession(str(copy), sess_options=options, providers=providers)
        words = ("owl hooting at night near a creek with frogs and wind in the reeds, "
                 "rain on leaves, a woodpecker drumming on a dead tree far away ") * 8
        texts = ["owl", "a wren singing a loud trill", words]
        encodings = self._make_tokenizer().encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = [{"input_ids": ids[:2], "attention_mask": mask[:2]}]
        for i in range(len(texts)):
            used = max(int(mask[i].sum()), 1)
            feeds.append({"input_ids": ids[i:i + 1, :used],
                          "attention_mask": mask[i:i + 1, :used]})
        for feed in feeds:
            a, b = session.run(None, feed)[0], other.run(None, feed)[0]
            if a.shape != b.shape or not np.array_equal(a, b):
                return False
        return True

    def _ort_level(self, branch: str):
        """The ONNX Runtime optimisation level to ask for, or None for its default (all).

        A graph the exporter saved with ONNX Runtime's extended optimisations applied
        (``graphs.<branch>.ort_optimized == "extended"``) needs only what depends on this
        CPU: the layout level for the audio graph (NCHWc for its convolution), the basic
        level for the text graph, which has no convolution (re-running the fusions costs
        180 ms of cold start on the full-size text graph and changes nothing)."""
        import onnxruntime as ort  # lazy: `info` and --help stay fast

        graphs = self._manifest.get("graphs")
        entry = graphs.get(branch) if isinstance(graphs, dict) else None
        if not (isinstance(entry, dict) and entry.get("ort_optimized") == "extended"):
            return None
        if branch == "audio":
            return ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.GraphOptimizationLevel.ORT_ENABLE_BASIC

    def _parallel_windows(self, providers: list[str]) -> int:
        """How many audio windows run at once, one single-threaded run each (1: windows
        run in batches on one session with `threads` threads instead).

        Above 1 only for a graph that runs one window per call anyway (not
        `batch_invariant`) on the CPU provider alone: ORT's intra-op threads scale poorly
        on one window of the int8 HTSAT graph (2 threads: 1.3-1.6x one), two windows at
        once on one thread each do better (1.6-2.2x; bench/audio_graph_profile.py
        parallel), and give the same codes."""
        if providers != ["CPUExecutionProvider"] or self.batch_invariant("audio"):
            return 1
        return self._threads or min(os.cpu_count() or 1, MAX_AUTO_AUDIO_WORKERS)

    def _worker_pool(self):
        with self._lock:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self._audio_workers,
                                                thread_name_prefix="cvahash-audio")
            return self._pool

    def close(self) -> None:
        """Drop the ONNX Runtime sessions (they are recreated on the next use)."""
        with self._lock:
            self._sessions.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    # -- text
    def _load_tokenizer(self):
        with self._lock:
            if self._tokenizer is None:
                self._verify_for("text")
                self._tokenizer = self._make_tokenizer()
            return self._tokenizer

    def _query_tokenizer(self, texts: list[str]):
        """For a one-shot process: a tokenizer that knows only the tokens and merges these
        texts can use (`cvahash.model.tokenindex`), or None (then the whole file is
        loaded). The index is made, once, the first time it is missing."""
        with self._lock:
            self._verify_for("text")
        digest = str(self._manifest["files"][TOKENIZER_FILE]["sha256"]).lower()
        index = tokenindex.open_index(digest)
        if index is None:
            if not tokenindex.passed_over(digest):
                self._build_token_index(digest)
            return None
        try:
            small = index.tokenizer_for(texts)
        except Exception as exc:  # a damaged index: load the file, make the index again
            log.debug("token index of %s not usable (%s)", self.path / TOKENIZER_FILE, exc)
            index.close()
            tokenindex.index_path(digest).unlink(missing_ok=True)
            return None
        index.close()
        return None if small is None else self._with_settings(small)

    def _build_token_index(self, digest: str) -> None:
        """Index tokenizer.json for later one-shot queries (or note that it cannot be);
        the whole tokenizer loaded on the way serves this process."""
        if not tokenindex.writable():
            return
        full = self._load_tokenizer_file()
        try:
            spec = json.loads((self.path / TOKENIZER_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            spec = None
        if not (isinstance(spec, dict) and tokenindex.qualifies(spec)
                and tokenindex.build(spec, full, digest) is not None):
            tokenindex.pass_over(digest)
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = self._with_settings(full)

    def _load_tokenizer_file(self):
        from tokenizers import Tokenizer  # lazy: only text queries need it

        path = self.path / TOKENIZER_FILE
        try:
            return Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a plain Exception
            raise BundleError(f"{path}: the tokenizers package cannot read it ({exc})") from exc

    def _make_tokenizer(self):
        """tokenizer.json with the manifest's truncation and padding switched on (the saved
        file carries none; docs/architecture.md, measured facts)."""
        return self._with_settings(self._load_tokenizer_file())

    def _with_settings(self, tok):
        settings = self._manifest["tokenizer"]
        pad = {"pad_id": int(settings.get("pad_id", 1)),
               "pad_token": str(settings.get("pad_token", "<pad>"))}
        tok.no_padding()
        tok.enable_truncation(max_length=int(settings["max_length"]))
        if settings.get("padding", "max_length") == "max_length":
            tok.enable_padding(length=int(settings["max_length"]), **pad)
        else:  # "longest": pad to the longest text of the batch
            tok.enable_padding(**pad)
        return tok

    @staticmethod
    def _check_texts(texts) -> list[str]:
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InvalidArgument("texts must be a list of strings (wrap a single query in [ ])")
        if len(texts) == 0:
            raise InvalidArgument("texts is empty: give at least one query")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InvalidArgument(f"text {i} is a {type(t).__name__}, not a string")
            if not t.strip():
                raise InvalidArgument(f"text {i} is empty or only whitespace; type what you "
                                      "want to hear, e.g. 'woodpecker drumming'")
        return list(texts)

    def tokenize(self, texts: Sequence[str]) -> TokenizedText:
        """Token ids as the model saw them in training (same ids as transformers), with
        padding and truncation from the manifest; ``truncated[i]`` tells whether text i
        was longer than ``max_length`` tokens and was cut."""
        texts = self._check_texts(texts)
        tok = None
        if self.one_shot_text and self._tokenizer is None:
            tok = self._query_tokenizer(texts)
        encodings = (tok or self._load_tokenizer()).encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        truncated = np.array([bool(e.overflowing) for e in encodings], dtype=bool)
        return TokenizedText(ids, mask, truncated)

    def batch_invariant(self, branch: str) -> bool:
        """Whether a row's logits are independent of the other rows run with it.

        Not so for dynamically quantised graphs: DynamicQuantizeLinear takes one scale
        over the whole batch, so a window's code could depend on its neighbours (we
        measured 1 bit in 320 flipping). Such graphs run one row at a time, so the same
        input always gives the same code (an indexed window finds itself at distance
        0). The exporter records the property per graph; absent means "not invariant".
        """
        graphs = self._manifest.get("graphs")
        entry = graphs.get(branch) if isinstance(graphs, dict) else None
        return bool(isinstance(entry, dict) and entry.get("batch_invariant") is True)

    def text_logits(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """float32 [n, bits] logits of the text graph."""
        return self.token_logits(self.tokenize(texts), batch_size=batch_size)

    def token_logits(self, tokens: TokenizedText, *, batch_size: int = 32) -> np.ndarray:
        """float32 [n, bits] logits of the text graph for texts already `tokenize`d.

        The logits of the last `TEXT_MEMO` distinct token sequences are remembered, so a
        query asked again (a watchlist, a page reloaded) is not run through the graph
        again; a row's logits depend only on its own tokens (rows run one at a time, or
        the graph is `batch_invariant`)."""
        step = batch_size if self.batch_invariant("text") else 1
        trim = self._manifest["tokenizer"].get("trim_padding") is True
        n = len(tokens.input_ids)
        out = np.empty((n, self.bits), dtype=np.float32)
        keys = [self._memo_key(tokens.input_ids[i], tokens.attention_mask[i], trim)
                for i in range(n)]
        todo, first, repeats = [], {}, []  # rows to run; a text given twice runs once
        with self._memo_lock:
            for i, key in enumerate(keys):
                hit = self._text_memo.get(key)
                if hit is not None:
                    self._text_memo.move_to_end(key)
                    out[i] = hit
                elif key in first:
                    repeats.append(i)
                else:
                    first[key] = i
                    todo.append(i)
        if not todo:
            return out
        session = self._session("text")
        rows = np.asarray(todo)
        for s in range(0, len(rows), step):
            part = rows[s:s + step]
            ids = tokens.input_ids[part]
            mask = tokens.attention_mask[part]
            if trim:
                # Padding columns no text of this run attends to are cut: the pooled
                # first token cannot see masked positions, and a 10-token query runs
                # 4-7x faster than one padded to 77 (docs/benchmarks/bundle.md).
                used = int(mask.sum(axis=1).max())
                ids, mask = ids[:, :used], mask[:, :used]
            out[part] = self._checked(session.run(None, {"input_ids": ids,
                                                         "attention_mask": mask})[0])
        for i in repeats:
            out[i] = out[first[keys[i]]]
        with self._memo_lock:
            for i in todo:
                self._text_memo[keys[i]] = out[i].copy()
                self._text_memo.move_to_end(keys[i])
            while len(self._text_memo) > TEXT_MEMO:
                self._text_memo.popitem(last=False)
        return out

    @staticmethod
    def _memo_key(ids: np.ndarray, mask: np.ndarray, trim: bool) -> bytes:
        if trim:
            used = int(mask.sum())
            ids, mask = ids[:used], mask[:used]
        return ids.tobytes() + b"|" + mask.tobytes()

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Packed codes uint8 [n, ceil(bits/8)] of text queries (empty text: ValueError)."""
        return pack_codes(self.text_logits(texts))

    def encode_tokens(self, tokens: TokenizedText) -> np.ndarray:
        """Packed codes of texts already `tokenize`d (a caller that needs the tokens, e.g.
        to tell whether a query was cut, tokenizes once)."""
        return pack_codes(self.token_logits(tokens))

    # -- audio
    def _check_features(self, features) -> np.ndarray:
        x = np.asarray(features)
        p = self._frontend
        want = (1, p.n_frames, p.n_mels)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise InvalidArgument(f"audio features must have shape [batch, {want[0]}, {want[1]}, "
                                  f"{want[2]}] (cvahash.model.frontend.log_mel with this bundle's "
                                  f"frontend_params), got {x.shape}")
        if x.shape[0] == 0:
            raise InvalidArgument("audio features hold no windows (batch size 0)")
        if not np.issubdtype(x.dtype, np.floating):
            raise InvalidArgument(f"audio features must be float32, got {x.dtype}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            bad = int(np.flatnonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1))[0])
            raise InvalidArgument(f"audio features of window {bad} contain NaN or infinity")
        return x

    def audio_logits(self, features, *, batch_size: int = DEFAULT_AUDIO_BATCH) -> np.ndarray:
        """float32 [B, bits] logits of the audio graph for log-mel ``features`` float32
        [B, 1, frames, mels], run ``batch_size`` windows at a time to bound memory (one at
        a time for a graph that is not `batch_invariant`)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgument(f"batch_size must be an integer >= 1, got {batch_size!r}")
        x = self._check_features(features)
        session = self._session("audio")
        if not self.batch_invariant("audio"):
            batch_size = 1
        name = session.get_inputs()[0].name
        out = np.empty((len(x), self.bits), dtype=np.float32)
        if self._audio_workers > 1 and len(x) > 1:
            # ORT releases the GIL in run(); each window is computed on its own, so the
            # codes are those of running the windows one after another.
            runs = [self._worker_pool().submit(session.run, None, {name: x[i:i + 1]})
                    for i in range(len(x))]
            for i, run in enumerate(runs):
                out[i:i + 1] = self._checked(run.result()[0])
            return out
        for start in range(0, len(x), batch_size):
            part = x[start:start + batch_size]
            out[start:start + batch_size] = self._checked(session.run(None, {name: part})[0])
        return out

    def _checked(self, logits):
        """A graph's output, refused unless it is [n, bits]: a graph whose output width
        is symbolic escapes `cvahash.model.manifest.check_graph`'s static check."""
        shape = getattr(logits, "shape", None)
        if shape is None or len(shape) != 2 or shape[1] != self.bits:
            raise BundleError(f"{self.path}: the graph returned logits of shape {shape}, not "
                              f"[n, {self.bits}] as manifest.json's bits says; the bundle does "
                              "not hold together (export it again)")
        return logits

    def encode_audio(self, features, *, batch_size: int = DEFAULT_AUDIO_BATCH) -> np.ndarray:
        """Packed codes uint8 [B, ceil(bits/8)] of log-mel windows float32 [B, 1, frames, mels]."""
        return pack_codes(self.audio_logits(features, batch_size=batch_size))
