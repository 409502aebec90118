"""Who may do what in the console: password hashes, roles, login throttling, CSRF tokens.

Roles (site file `users:`): a guard watches alarms, patrol and access and acknowledges their
alarms, takes repair reports, dispatches and follows them up, and keeps the shift log; an
electrician also sees the meters and acknowledges meter alarms, works and closes repair orders,
inspects and keeps the equipment register; an accountant sees the allocation and reviews and
approves its runs; an admin sees and does everything.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()

# What each role may see or do. Pages and APIs name the permission they need.
PERMISSIONS: dict[str, set[str]] = {
    "guard": {"alarms", "ack_field", "patrol", "access", "health", "lighting",
              # repair orders: the guard room takes reports, dispatches and calls the resident back
              "orders", "order_create", "order_assign", "order_followup", "equipment", "shift"},
    "electrician": {"alarms", "ack_field", "ack_meter", "patrol", "access", "meters", "health", "lighting",
                    # ... the electrician goes, repairs and records; inspects; keeps the register
                    "orders", "order_work", "equipment", "equipment_edit", "inspections", "inspection_record"},
    "accountant": {"allocation", "allocation_sign", "health"},
    "admin": {"alarms", "ack_field", "ack_meter", "patrol", "access", "meters", "allocation", "allocation_sign",
              "health", "lighting", "orders", "order_create", "order_assign", "order_work", "order_followup",
              "equipment", "equipment_edit", "inspections", "inspection_record", "shift", "service"},
}
HOME = {"guard": "/alarms", "electrician": "/alarms", "accountant": "/allocation", "admin": "/alarms"}
# Alarms from these rule kinds are the electrician's; the others (access, door, patrol) the guards'.
METER_RULE_KINDS = {"threshold", "offline", "counter", "daylight", "consumption",
                    "lighting_stuck", "lighting_dark", "lighting_readback", "inspection_overdue"}


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


# A hash to check against when the user does not exist, so both cases take the same time.
_DUMMY = hash_password(secrets.token_hex(16))


def check_login(users: dict, name: str, password: str):
    user = users.get(name)
    ok = verify_password(user.password_hash if user else _DUMMY, password)
    return user if ok and user is not None else None


def may(role: str | None, permission: str) -> bool:
    return role is not None and permission in PERMISSIONS.get(role, set())


def ack_permission(rule_kind: str) -> str:
    return "ack_meter" if rule_kind in METER_RULE_KINDS else "ack_field"


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def csrf_ok(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(expected, given)


@dataclass
class LoginThrottle:
    """After `free` failures for one name or one address within `window_s`, every further attempt
    waits: the wait doubles with each failure up to `max_wait_s`. A success clears the name.

    An attempt counts from the moment it is let through (`admit`), as a failure until it is known
    to be one or not: password checks take a while in a worker thread, and attempts sent all at
    once must not all pass the check before the first failure is counted."""

    free: int = 5
    window_s: float = 900.0
    max_wait_s: float = 300.0
    clock: callable = time.monotonic
    _fails: dict[str, list[float]] = field(default_factory=dict)
    _open: dict[str, int] = field(default_factory=dict)       # attempts let through, not yet decided

    def _recent(self, key: str) -> list[float]:
        now = self.clock()
        kept = [t for t in self._fails.get(key, []) if now - t < self.window_s]
        if kept:
            self._fails[key] = kept
        else:
            self._fails.pop(key, None)
        return kept

    @staticmethod
    def _keys(name: str, address: str) -> tuple[str, str]:
        return f"u:{name}", f"a:{address}"

    def wait_s(self, name: str, address: str) -> float:
        """Seconds before the next attempt is taken (0: go ahead)."""
        worst = 0.0
        now = self.clock()
        for key in self._keys(name, address):
            fails = self._recent(key)
            undecided = self._open.get(key, 0)
            if len(fails) + undecided >= self.free:
                wait = min(self.max_wait_s, 2.0 ** (len(fails) + undecided - self.free + 1))
                worst = max(worst, (now if undecided else fails[-1]) + wait - now)
        return max(0.0, worst)

    def admit(self, name: str, address: str) -> float:
        """0: the attempt may go ahead and is counted now (end it with `failed` or `succeeded`);
        else the seconds to wait, and the attempt is refused."""
        wait = self.wait_s(name, address)
        if wait == 0:
            for key in self._keys(name, address):
                self._open[key] = self._open.get(key, 0) + 1
        return wait

    def _decided(self, name: str, address: str) -> None:
        for key in self._keys(name, address):
            n = self._open.get(key, 0) - 1
            if n > 0:
                self._open[key] = n
            else:
                self._open.pop(key, None)

    def failed(self, name: str, address: str) -> None:
        self._decided(name, address)
        now = self.clock()
        for key in self._keys(name, address):
            self._fails.setdefault(key, []).append(now)
        if len(self._fails) > 10_000:      # a flood of names: forget the oldest
            for key in list(self._fails)[:5_000]:
                del self._fails[key]

    def succeeded(self, name: str, address: str) -> None:
        self._decided(name, address)
        self._fails.pop(f"u:{name}", None)
