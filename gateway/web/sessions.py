"""Console sessions, kept by the server: the (signed) cookie carries only a random session id.

A session ends
- when its user logs out;
- when its user is no longer in the site file, or has another password hash (`gateway users add`
  on an existing user, then a reload): the session remembers a fingerprint of the hash it
  logged in with;
- after `web.idle_minutes` without a request: a console page left open counts as use (its live
  updates ask every 15 s, and an alarm screen must not go dark), a closed tab or a browser left
  on another site does not;
- `web.session_hours` after login, whatever happens.

Inside the gateway the sessions are kept in the ledger too (the id only as a hash, useless to
whoever reads the ledger), so a reload or restart logs nobody out; a session's last-seen time
reaches the ledger at most once a minute. A console without a ledger keeps them in memory.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

SAVE_EVERY_S = 60.0


def fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:32]


def _key(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def _belongs(s: "Session", user) -> bool:
    """The session's user is still in the site file, with the password it logged in with."""
    return user is not None and fingerprint(user.password_hash) == s.pw


@dataclass
class Session:
    user: str
    pw: str              # fingerprint of the password hash at login
    created: float       # wall clock, seconds
    seen: float
    saved: float         # the last-seen time the ledger has


class SessionStore:
    def __init__(self, idle_s: float, max_s: float, ledger=None, clock=time.time):
        self.idle_s, self.max_s = idle_s, max_s
        self.ledger = ledger
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._failing = ""
        if ledger is not None:
            for key, user, pw, created_us, seen_us in self._keep("read", ledger.web_sessions) or []:
                self._sessions[key] = Session(user, pw, created_us / 1e6, seen_us / 1e6, seen_us / 1e6)

    def start(self, user) -> str:
        """A new session for `user` (a config.User); returns its id, for the cookie."""
        self.prune()
        sid = secrets.token_urlsafe(32)
        now = self.clock()
        s = self._sessions[_key(sid)] = Session(user.name, fingerprint(user.password_hash), now, now, now)
        self._save(_key(sid), s)
        return sid

    def user(self, sid: str | None, users: dict):
        """The session's user if the session still stands (it was used just now), else None
        (and a session that no longer stands is ended)."""
        key = _key(sid) if sid else ""
        s = self._sessions.get(key)
        if s is None:
            return None
        now = self.clock()
        user = users.get(s.user)
        if not (self._fresh(s, now) and _belongs(s, user)):
            self._drop([key])
            return None
        s.seen = now
        if now - s.saved >= SAVE_EVERY_S:
            self._save(key, s)
        return user

    def end(self, sid: str | None) -> None:
        if sid and _key(sid) in self._sessions:
            self._drop([_key(sid)])

    def prune(self, users: dict | None = None) -> int:
        """End the sessions that have run out (with `users`: also those of removed users and
        changed passwords); returns how many."""
        now = self.clock()
        gone = [k for k, s in self._sessions.items()
                if not self._fresh(s, now) or (users is not None and not _belongs(s, users.get(s.user)))]
        if gone:
            self._drop(gone)
        return len(gone)

    def _fresh(self, s: Session, now: float) -> bool:
        return now - s.seen <= self.idle_s and now - s.created <= self.max_s

    def _save(self, key: str, s: Session) -> None:
        s.saved = s.seen
        if self.ledger is not None:
            self._keep("save", self.ledger.save_web_session, key, s.user, s.pw, int(s.created * 1e6),
                       int(s.seen * 1e6))

    def _drop(self, keys: list[str]) -> None:
        for k in keys:
            self._sessions.pop(k, None)
        if self.ledger is not None:
            self._keep("delete", self.ledger.delete_web_sessions, keys)

    def _keep(self, what: str, fn, *args):
        """The ledger's answer; a ledger that cannot be written (disk full, locked) leaves the
        sessions in memory, said once per distinct failure."""
        try:
            result = fn(*args)
        except sqlite3.Error as e:
            if str(e) != self._failing:
                log.error("web: cannot %s console sessions in the ledger (kept in memory): %s", what, e)
                self._failing = str(e)
            return None
        self._failing = ""
        return result
