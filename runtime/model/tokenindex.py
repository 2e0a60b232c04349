"""A tokenizer for a query or two that does not load the whole vocabulary.

Loading a RoBERTa-size tokenizer.json (50,265 tokens, 50,000 BPE merges) with
``tokenizers`` costs 120-160 CPU-ms, most of a cold ``cvahash search`` once the text graph
is mapped (docs/benchmarks/runtime.md, run 8). Byte-level BPE over a few words only ever
uses tokens and merges that are substrings of the query's bytes (every token a BPE builds
from a piece of text is a contiguous run of that piece's bytes, and a merge joins two
adjacent ones). So the station keeps, once per tokenizer file, an indexed copy of its
vocabulary and merges (SQLite, beside the mapped graphs), and for a query builds a
``tokenizers`` tokenizer from the tokenizer.json minus its model plus a BPE model of only
the tokens and merges (in their original order) that are substrings of the query. The
pre-tokenizer, special tokens, post-processor, truncation and padding are ``tokenizers``'
own, so the ids, mask and truncation flag are those of the full tokenizer; the index is
kept only when a probe of mixed texts tokenizes identically both ways.

Only plain byte-level BPE tokenizers qualify (no normalizer, no subword prefix or suffix,
no dropout, no unknown token, no byte fallback); anything else loads tokenizer.json.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from functools import lru_cache
from pathlib import Path

from . import verified
from .mapped import FOLDER
from .verified import cache_dir

log = logging.getLogger(__name__)

INDEX_VERSION = 3
_RECORD_TAG = "token-index-of:"  # what the record of verified files holds for an index
MAX_QUERY_BYTES = 4096  # longer text (a paste gone wrong): load the whole tokenizer
PROBE = ["owl hooting", "a woodpecker drumming on a dead tree, far away!",
         "Zaunkönig singt 🐦  twice\tand\nagain <mask> <s>x</s>", "wind " * 40,
         "  leading and trailing  ", "numbers 1234 5.67 and 'quotes' don't"]


@lru_cache(maxsize=1)
def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table (what the ByteLevel pre-tokenizer uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]


def _mapped(text: str) -> str:
    chars = _byte_chars()
    return "".join(chars[b] for b in text.encode("utf-8"))


def qualifies(spec: dict) -> bool:
    """Whether a parsed tokenizer.json is plain byte-level BPE this index reproduces."""
    model = spec.get("model") or {}
    pre = spec.get("pre_tokenizer") or {}
    return (model.get("type") == "BPE" and spec.get("normalizer") is None
            and pre.get("type") == "ByteLevel" and not model.get("dropout")
            and not model.get("continuing_subword_prefix")
            and not model.get("end_of_word_suffix") and model.get("unk_token") is None
            and not model.get("byte_fallback") and not model.get("ignore_merges")
            and isinstance(model.get("vocab"), dict) and isinstance(model.get("merges"), list))


def _pair(merge) -> tuple[str, str]:
    if isinstance(merge, str):
        a, b = merge.split(" ", 1)
        return a, b
    a, b = merge
    return str(a), str(b)


def index_path(digest: str) -> Path:
    return cache_dir() / FOLDER / f"tokenizer-{digest.lower()}.sqlite"


class TokenIndex:
    """An indexed tokenizer.json: `tokenizer_for(texts)` gives a ``tokenizers.Tokenizer``
    that tokenizes ``texts`` exactly as the whole file would."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        meta = dict(self.db.execute("SELECT key, value FROM meta"))
        if int(meta.get("version", 0)) != INDEX_VERSION:
            raise ValueError("another index version")
        self.skeleton = meta["skeleton"]
        self.options = json.loads(meta["options"])
        self.add_prefix_space = meta["add_prefix_space"] == "1"
        self.max_len = int(meta["max_len"])
        # Special and added tokens at their ids: a model without them would renumber them.
        self.added = {t["content"]: int(t["id"])
                      for t in json.loads(self.skeleton).get("added_tokens") or ()}

    def close(self) -> None:
        self.db.close()

    def _substrings(self, texts) -> set[str]:
        subs: set[str] = set()
        for text in texts:
            m = _mapped(text)
            for i in range(len(m)):
                for j in range(i + 1, min(len(m), i + self.max_len) + 1):
                    subs.add(m[i:j])
        if self.add_prefix_space:  # a space is put before each piece between special tokens
            space = _mapped(" ")
            subs |= {space + sub for sub in subs if len(sub) < self.max_len}
            subs.add(space)
        return subs

    def _select(self, sql: str, keys: list[str]) -> list[tuple]:
        rows: list[tuple] = []
        for s in range(0, len(keys), 900):
            part = keys[s:s + 900]
            rows += self.db.execute(sql.format(",".join("?" * len(part))), part).fetchall()
        return rows

    def tokenizer_for(self, texts):
        """The restricted tokenizer for ``texts``, or None for text too long to pay."""
        from tokenizers import Tokenizer, models

        if sum(len(t.encode("utf-8")) for t in texts) > MAX_QUERY_BYTES:
            return None
        keys = sorted(self._substrings(texts))
        vocab = dict(self._select("SELECT tok, id FROM vocab WHERE tok IN ({})", keys))
        vocab.update(self.added)
        merges = sorted(self._select("SELECT rank, a, b FROM merges WHERE merged IN ({})", keys))
        pairs = [(a, b) for _, a, b in merges if a in vocab and b in vocab]
        tok = Tokenizer.from_str(self.skeleton)
        tok.model = models.BPE(vocab, pairs, **self.options)
        return tok


def build(spec: dict, full, digest: str) -> Path | None:
    """Write the index of the tokenizer.json ``spec`` (already parsed; ``full`` is the
    ``tokenizers.Tokenizer`` made from it) and keep it if it tokenizes `PROBE` as
    ``full`` does; returns its path or None."""
    target = index_path(digest)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        model = spec["model"]
        vocab = model["vocab"]
        # The file without its vocabulary and merges, but with the added (special) tokens
        # in the model's vocabulary: tokenizers numbers added tokens from the model it is
        # read with.
        added = {t["content"]: int(t["id"]) for t in spec.get("added_tokens") or ()}
        skeleton = dict(spec, model=dict(model, vocab=added, merges=[]))
        options = {k: v for k, v in model.items()
                   if k not in ("type", "vocab", "merges") and v is not None}
        pre = spec.get("pre_tokenizer") or {}
        db = sqlite3.connect(tmp)
        try:
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
            db.execute("CREATE TABLE vocab (tok TEXT PRIMARY KEY, id INTEGER) WITHOUT ROWID")
            db.execute("CREATE TABLE merges (merged TEXT, a TEXT, b TEXT, rank INTEGER)")
            db.executemany("INSERT INTO vocab VALUES (?, ?)", vocab.items())
            db.executemany("INSERT INTO merges VALUES (?, ?, ?, ?)",
                           ((a + b, a, b, r) for r, (a, b) in
                            enumerate(_pair(m) for m in model["merges"])))
            db.execute("CREATE INDEX merges_by_merged ON merges (merged)")
            db.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("version", str(INDEX_VERSION)), ("skeleton", json.dumps(skeleton)),
                ("options", json.dumps(options)),
                ("add_prefix_space", "1" if pre.get("add_prefix_space") else "0"),
                ("max_len", str(max((len(t) for t in vocab), default=1)))])
            db.commit()
        finally:
            db.close()
        index = TokenIndex(tmp)
        try:
            for texts in ([t] for t in PROBE):
                if not _same(index.tokenizer_for(texts), full, texts):
                    log.debug("token index of %s differs from it; not kept", digest)
                    tmp.unlink(missing_ok=True)
                    return None
            if not _same(index.tokenizer_for(PROBE), full, PROBE):
                tmp.unlink(missing_ok=True)
                return None
        finally:
            index.close()
        os.replace(tmp, target)
        verified.remember(target, _RECORD_TAG + digest.lower())
        _prune(target)
        return target
    except (OSError, sqlite3.Error, ValueError, KeyError, TypeError) as exc:
        log.debug("token index not written (%s)", exc)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        return None


def _same(small, full, texts) -> bool:
    a, b = small.encode_batch(list(texts)), full.encode_batch(list(texts))
    return all(x.ids == y.ids and x.attention_mask == y.attention_mask
               and x.type_ids == y.type_ids for x, y in zip(a, b, strict=True))


def writable() -> bool:
    """Whether the cache folder can take an index (else nothing is tried)."""
    try:
        folder = cache_dir() / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        return os.access(folder, os.W_OK)
    except OSError:
        return False


def _marker(digest: str) -> Path:
    return cache_dir() / FOLDER / f"tokenizer-{digest.lower()}.not-indexed"


def pass_over(digest: str) -> None:
    """Remember that this tokenizer is not indexed (not plain byte-level BPE, or its index
    did not tokenize the probe identically), so later queries do not try again."""
    try:
        _marker(digest).touch()
    except OSError:
        pass


def passed_over(digest: str) -> bool:
    return _marker(digest).exists()


def open_index(digest: str) -> TokenIndex | None:
    """The index of the tokenizer whose sha256 is ``digest``, if it is there and unchanged
    since it was written (its identity is in the record of verified files)."""
    path = index_path(digest)
    if verified.known_digest(path) != _RECORD_TAG + digest.lower():
        return None
    try:
        return TokenIndex(path)
    except (sqlite3.Error, ValueError, KeyError):
        return None


def _prune(keep: Path, count: int = 2) -> None:
    """Keep the newest ``count`` indexes (a station holds one or two bundles)."""
    try:
        others = sorted((p.stat().st_mtime, p) for p in keep.parent.glob("tokenizer-*.sqlite")
                        if p != keep)
    except OSError:
        return
    for _, path in others[:max(0, len(others) - (count - 1))]:
        try:
            path.unlink()
        except OSError:
            pass
