"""The workbench login: one user and password, compared in constant time, with failed
attempts throttled.

After ``free_failures`` wrong passwords for a user name, that name is locked for a delay that
doubles with each further failure (``base_delay_s`` up to ``max_delay_s``); while it is locked
every attempt is refused, the right password included, and counts as another failure. A
success clears the name's record. Failures across all names are also counted in a sliding
window: past ``global_limit`` per ``window_s``, every login is refused until the window has
room again, so trying many user names does not get around the lock.

Gradio calls the checker as ``auth(username, password) -> bool`` and gives it no client
address, so the lock is per user name and global, not per client: someone who keeps failing
also keeps the real user out until the delay has passed (the delay is bounded by
``max_delay_s``).
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from memfactory_core.errors import MemFactoryError

log = logging.getLogger(__name__)

AUTH_ENV = "MEMFACTORY_UI_AUTH"
AUTH_FILE_ENV = "MEMFACTORY_UI_AUTH_FILE"


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``USER:PASSWORD`` as a pair (None for no value). The error never echoes the value."""
    if value is None or value == "":
        return None
    user, sep, password = value.strip("\r\n").partition(":")
    if not sep or not user or not password:
        raise MemFactoryError(f"--auth / {AUTH_ENV} must be USER:PASSWORD, both non-empty")
    return user, password


def read_auth_file(path: str | Path) -> tuple[str, str]:
    """The ``USER:PASSWORD`` on the first line of ``path``. The error never echoes it."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else "unreadable"
        raise MemFactoryError(f"--auth-file {p}: cannot read it ({reason})") from None
    lines = text.splitlines()
    try:
        pair = parse_auth(lines[0] if lines else "")
    except MemFactoryError:
        pair = None
    if pair is None:
        raise MemFactoryError(f"--auth-file {p}: its first line must be USER:PASSWORD, "
                              "both non-empty")
    return pair


@dataclass
class _Record:
    failures: int = 0
    locked_until: float = 0.0


@dataclass
class ThrottledAuth:
    """A Gradio ``auth`` callable for one user that throttles wrong guesses."""

    user: str
    password: str
    free_failures: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 300.0
    global_limit: int = 30
    window_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _records: dict[str, _Record] = field(default_factory=dict, repr=False)
    _recent: deque[float] = field(default_factory=deque, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __repr__(self) -> str:  # never the password
        return f"ThrottledAuth(user={self.user!r})"

    def __call__(self, username: str, password: str) -> bool:
        now = self.clock()
        with self._lock:
            while self._recent and self._recent[0] <= now - self.window_s:
                self._recent.popleft()
            record = self._records.get(username)
            if len(self._recent) >= self.global_limit or (
                    record is not None and now < record.locked_until):
                self._fail(username, now)
                return False
            ok = hmac.compare_digest(str(username).encode(), self.user.encode()) & \
                hmac.compare_digest(str(password).encode(), self.password.encode())
            if ok:
                self._records.pop(username, None)
                return True
            self._fail(username, now)
            return False

    def locked(self, username: str) -> bool:
        """Whether a login as ``username`` is refused now, whatever the password."""
        now = self.clock()
        with self._lock:
            record = self._records.get(username)
            recent = sum(1 for t in self._recent if t > now - self.window_s)
            return recent >= self.global_limit or (
                record is not None and now < record.locked_until)

    def _fail(self, username: str, now: float) -> None:
        self._recent.append(now)
        if len(self._records) > 10_000 and username not in self._records:
            # a flood of made-up names: keep the table bounded (the global window still counts)
            self._records.clear()
        record = self._records.setdefault(username, _Record())
        record.failures += 1
        over = record.failures - self.free_failures
        if over >= 0:
            delay = min(self.base_delay_s * (2 ** min(over, 30)), self.max_delay_s)
            record.locked_until = max(record.locked_until, now + delay)
            if over == 0:
                log.warning("login: %d failed attempts for user %r; throttling",
                            record.failures, username)
