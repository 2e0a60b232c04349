"""Who may use the station web page: the password file, sessions, CSRF, login limits.

- The password is stored as one line ``scrypt$N$r$p$<salt>$<hash>`` (base64) in a file of
  mode 0600 (``cvahash web passwd`` writes it, in the config's folder by default).
- Sessions live in a signed cookie (itsdangerous), HttpOnly and SameSite=Strict. The
  signing key is derived from the password file, so changing the password ends every
  session; without a password it is random per server process.
- Every state change (log in, log out, acknowledge an alert) is a POST that must carry
  the session's CSRF token (a hidden form field or the ``X-CSRF-Token`` header) and, when
  the browser sends one, an ``Origin`` of this very host.
- Failed logins are limited per client address (`LoginLimiter`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
import time
from collections import deque
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer

from ...errors import CvahashError

__all__ = ["LoginLimiter", "SessionCodec", "hash_password", "read_password_file",
           "verify_password", "write_password_file"]

PASSWORD_FILE_NAME = "web-password"
# scrypt cost: 2^14 x 8 x 1 takes about 50 ms and 16 MB on a Raspberry Pi 4, cheap once
# per login and expensive for anybody who copies the file and guesses.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
MIN_PASSWORD_CHARS = 8
SESSION_COOKIE = "cvahash_session"
SESSION_MAX_AGE_S = 7 * 24 * 3600


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The password-file line for ``password`` (a fresh random salt unless given)."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R,
                            p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, line: str) -> bool:
    """Whether ``password`` matches a password-file line (constant-time compare)."""
    try:
        kind, n, r, p, salt, digest = line.strip().split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n),
                             r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def write_password_file(path: str | os.PathLike, password: str) -> Path:
    """Write the hash of ``password`` to ``path`` with mode 0600 (temp file + rename)."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise CvahashError(f"the password is too short: use at least {MIN_PASSWORD_CHARS} "
                           "characters (a phrase of a few words is easy to type on a phone)")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(hash_password(password) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as exc:
        raise CvahashError(f"cannot write the password file {path}: {exc.strerror or exc}; "
                           "run cvahash web passwd as the user that owns that folder") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_password_file(path: str | os.PathLike | None) -> str | None:
    """The hash line in ``path``, or None when there is no such file. Refuses a file that
    others can read or that does not hold a hash, saying how to fix it."""
    if path is None:
        return None
    path = Path(path)
    try:
        st = path.stat()
        line = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CvahashError(f"cannot read the web password file {path}: {exc}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise CvahashError(f"the web password file {path} can be read by other users "
                           f"(mode {stat.S_IMODE(st.st_mode):o}): chmod 600 {path}")
    if not line.startswith("scrypt$") or line.count("$") != 5:
        raise CvahashError(f"{path} is not a cvahash password file: set the password again "
                           "with cvahash web passwd")
    return line


class SessionCodec:
    """Signed session cookies: ``{"csrf": token, "user": bool}``."""

    def __init__(self, password_line: str | None):
        key = (hashlib.sha256(b"cvahash-web-session\0" + password_line.encode()).digest()
               if password_line else os.urandom(32))
        self._s = URLSafeTimedSerializer(key, salt="cvahash-session")

    def new(self, user: bool = False) -> dict:
        return {"csrf": secrets.token_urlsafe(24), "user": bool(user)}

    def dumps(self, session: dict) -> str:
        return self._s.dumps(session)

    def loads(self, cookie: str | None) -> dict | None:
        if not cookie:
            return None
        try:
            data = self._s.loads(cookie, max_age=SESSION_MAX_AGE_S)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
            return None
        return data


def csrf_ok(session: dict | None, token: str | None) -> bool:
    if not session or not token:
        return False
    return hmac.compare_digest(str(session["csrf"]), str(token))


class LoginLimiter:
    """At most ``attempts`` failed logins per client address in ``window_s`` seconds."""

    def __init__(self, attempts: int = 5, window_s: float = 300.0, clock=time.monotonic):
        self.attempts, self.window_s, self.clock = attempts, window_s, clock
        self._failures: dict[str, deque] = {}

    def _recent(self, client: str) -> deque:
        q = self._failures.setdefault(client, deque())
        now = self.clock()
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again (0 when it may now)."""
        q = self._recent(client)
        if len(q) < self.attempts:
            return 0.0
        return max(1.0, self.window_s - (self.clock() - q[0]))

    def failed(self, client: str) -> None:
        self._recent(client).append(self.clock())
        if len(self._failures) > 10_000:  # an address sweep: forget the oldest
            self._failures.pop(next(iter(self._failures)))

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
