"""Signing keys for SD-card updates: Ed25519, a PKCS8 PEM private key and a one-line
``KEY.pub`` (``cvahash-ed25519 <base64 of the 32-byte key> <comment>``).

A station trusts the public keys it was given (``--trust``); an update names its key by
``key_id`` (the first 8 bytes of sha256 of the raw public key).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import CvahashError, UpdateRejected

__all__ = ["PUBLIC_KEY_TAG", "TrustedKey", "generate_keypair", "key_id_of", "load_private_key",
           "load_public_key", "trust"]

PUBLIC_KEY_TAG = "cvahash-ed25519"


def _bad_key_file(message: str) -> UpdateRejected:
    exc = UpdateRejected(message)
    exc.reason = "bad-key-file"
    return exc



@dataclass(frozen=True)
class TrustedKey:
    """A public key a station accepts updates from; ``key_id`` is 8 bytes."""
    key_id: bytes
    public_key: Any  # cryptography Ed25519PublicKey
    source: str

    @property
    def key_id_hex(self) -> str:
        return self.key_id.hex()


def key_id_of(raw_public: bytes) -> bytes:
    return hashlib.sha256(raw_public).digest()[:8]


def trust(public_key, source: str = "") -> TrustedKey:
    """A TrustedKey for a cryptography Ed25519PublicKey already in memory."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return TrustedKey(key_id_of(raw), public_key, source)


def generate_keypair(out: str | Path, comment: str = "") -> tuple[Path, Path]:
    """Write a new Ed25519 private key to ``out`` (mode 0600) and its public key to
    ``out.pub``. Refuses to overwrite either: a lost signing key cannot be recovered."""
    out = Path(out)
    pub_path = out.with_name(out.name + ".pub")
    for path in (out, pub_path):
        if path.exists():
            raise CvahashError(f"{path} already exists; choose another --out or move it "
                               "away (a signing key is never overwritten)")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
    comment = re.sub(r"\s+", "_", comment.strip())[:100]
    line = f"{PUBLIC_KEY_TAG} {base64.b64encode(raw).decode()} {comment}".rstrip() + "\n"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(pub_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(line)
    return out, pub_path


def load_private_key(path: str | Path):
    """The Ed25519 private key in ``path`` (PKCS8 PEM, as `generate_keypair` writes it)."""
    try:
        data = Path(path).read_bytes()[:16384]
        key = serialization.load_pem_private_key(data, password=None)
    except OSError as exc:
        raise CvahashError(f"{path}: cannot read the signing key: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise CvahashError(f"{path}: not an unencrypted PEM private key ({exc}); make one "
                           "with: cvahash keygen --out KEY") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CvahashError(f"{path}: not an Ed25519 key; make one with: cvahash keygen")
    return key


def load_public_key(path: str | Path) -> TrustedKey:
    """Parse a ``KEY.pub`` file. Raises UpdateRejected (reason ``bad-key-file``)."""
    try:
        with open(path, "rb") as f:
            data = f.read(4097)
    except OSError as exc:
        raise _bad_key_file(f"{path}: cannot read the trusted key: "
                            f"{exc.strerror}") from None
    parts = data.decode("utf-8", "replace").split()
    if len(data) > 4096 or len(parts) < 2 or parts[0] != PUBLIC_KEY_TAG:
        raise _bad_key_file(f"{path}: not a cvahash public key (expected a line "
                            f"'{PUBLIC_KEY_TAG} <base64> [comment]', as keygen writes to KEY.pub)")
    try:
        raw = base64.b64decode(parts[1], validate=True)
        if len(raw) != 32:
            raise ValueError(f"{len(raw)} bytes, expected 32")
        key = Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise _bad_key_file(f"{path}: damaged public key ({exc})") from None
    return TrustedKey(key_id_of(raw), key, str(path))
