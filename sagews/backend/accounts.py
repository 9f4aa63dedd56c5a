"""Accounts and login sessions: argon2id hashes, server-side revocable sessions, login rate limits.

The cookie holds a random token; the DB stores only its SHA-256 (``sessions.token_hash``), so a
leaked sessions table cannot be replayed. Lookups are cached in memcached under the hash and the
cache entry is deleted whenever the session is revoked.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from sagews.db.models import Account, AuthSession
from sagews.db.types import utcnow

HASHER = PasswordHasher()  # argon2id, library defaults (t=3, m=64 MiB, p=4)
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,99}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
# verified against when the account does not exist, so timing does not reveal which names exist
_DUMMY_HASH = HASHER.hash("not a password of anyone")


class AccountError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class User:
    """What handlers know about the logged-in account (cached as a dict)."""

    id: int
    name: str
    is_admin: bool

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "is_admin": self.is_admin}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    return HASHER.hash(password)


def check_username(name: object) -> str:
    if not isinstance(name, str) or not USERNAME.match(name):
        raise AccountError("bad_field", "User names are 1-100 letters, digits or _ . @ + -")
    return name


def check_password(password: object) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError("bad_field", f"Passwords are {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


# --- DB functions (run through Database.run: sync, in a DB thread, one transaction) ----------------


def create_account(s: Session, name: str, pw_hash: str | None, is_admin: bool = False) -> User:
    email = name.lower()  # the login name lives in accounts.email (unique, lower-cased)
    if s.scalar(select(Account.id).where(Account.email == email)) is not None:
        raise AccountError("taken", "That user name is taken", 409)
    a = Account(email=email, name=name, password_hash=pw_hash, is_admin=is_admin)
    s.add(a)
    s.flush()
    return User(a.id, a.name, a.is_admin)


def find_login(s: Session, name: str) -> tuple[User, str | None, bool] | None:
    a = s.scalar(select(Account).where(Account.email == name.lower()))
    if a is None:
        return None
    return User(a.id, a.name, a.is_admin), a.password_hash, a.disabled


def set_password(s: Session, name: str, pw_hash: str, revoke: bool = True) -> list[str]:
    """Set the password; revoke every session (returns their token hashes for cache invalidation)."""
    a = s.scalar(select(Account).where(Account.email == name.lower()))
    if a is None:
        raise AccountError("not_found", f"No user called {name}", 404)
    a.password_hash = pw_hash
    hashes: list[str] = []
    if revoke:
        hashes = list(
            s.scalars(
                select(AuthSession.token_hash).where(
                    AuthSession.account_id == a.id, AuthSession.revoked.is_(False)
                )
            )
        )
        s.execute(update(AuthSession).where(AuthSession.account_id == a.id).values(revoked=True))
    return hashes


def new_session(s: Session, account_id: int, token_hash: str, days: float, ip: str | None) -> None:
    now = utcnow()
    s.add(
        AuthSession(
            token_hash=token_hash,
            account_id=account_id,
            expires=now + dt.timedelta(days=days),
            last_seen=now,
            ip=(ip or "")[:45] or None,
        )
    )


def session_user(s: Session, token_hash: str) -> User | None:
    row = s.execute(
        select(Account.id, Account.name, Account.is_admin, AuthSession.expires)
        .join(AuthSession, AuthSession.account_id == Account.id)
        .where(
            AuthSession.token_hash == token_hash,
            AuthSession.revoked.is_(False),
            Account.disabled.is_(False),
        )
    ).first()
    now = utcnow()
    if row is None or row.expires <= now:
        return None
    # last_seen for operators (at most one write per session per cache period: lookups are cached)
    s.execute(
        update(AuthSession)
        .where(
            AuthSession.token_hash == token_hash,
            or_(AuthSession.last_seen.is_(None), AuthSession.last_seen < now - dt.timedelta(minutes=5)),
        )
        .values(last_seen=now)
    )
    return User(row.id, row.name, row.is_admin)


def session_expiry(s: Session, token_hash: str) -> float | None:
    exp = s.scalar(select(AuthSession.expires).where(AuthSession.token_hash == token_hash))
    return exp.timestamp() if exp else None


def revoke_session(s: Session, token_hash: str) -> None:
    s.execute(update(AuthSession).where(AuthSession.token_hash == token_hash).values(revoked=True))


def rename_account(s: Session, account_id: int, name: str) -> list[str]:
    a = s.get(Account, account_id)
    if a is None:
        raise AccountError("not_found", "No such account", 404)
    if name.lower() != a.email and s.scalar(select(Account.id).where(Account.email == name.lower())):
        raise AccountError("taken", "That user name is taken", 409)
    a.email, a.name = name.lower(), name
    return list(s.scalars(select(AuthSession.token_hash).where(AuthSession.account_id == account_id)))


def verify_password(pw_hash: str | None, password: str) -> bool:
    """Constant-ish time: a missing account still costs one argon2 verification."""
    try:
        return HASHER.verify(pw_hash or _DUMMY_HASH, password) and pw_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


class PasswordWork:
    """Where argon2 runs: ``threads`` threads (so a login storm takes at most that many cores from
    everyone else) and at most ``waiting`` queued behind them (then AccountError busy, 503)."""

    def __init__(self, threads: int = 1, waiting: int = 64) -> None:
        import concurrent.futures

        self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="sagews-argon2")
        self.limit = threads + waiting
        self.queued = 0

    async def run(self, fn: Any, *args: Any) -> Any:
        import asyncio

        if self.queued >= self.limit:
            raise AccountError("busy", "Too many logins at once; try again in a few seconds", 503)
        self.queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            self.queued -= 1

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def new_token() -> tuple[str, str]:
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


class RateLimiter:
    """Sliding window: at most ``limit`` events per key in ``window`` seconds (process-local).

    With several backends each allows ``limit``; HAProxy's stick tables bound the total per IP.
    """

    def __init__(self, limit: int, window: float = 300.0, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self.events: dict[str, deque[float]] = {}

    def blocked(self, key: str) -> bool:
        q = self.events.get(key)
        if not q:
            return False
        cutoff = time.monotonic() - self.window
        while q and q[0] < cutoff:
            q.popleft()
        return len(q) >= self.limit

    def hit(self, key: str) -> None:
        if len(self.events) >= self.max_keys:
            cutoff = time.monotonic() - self.window
            for k in [k for k, q in self.events.items() if not q or q[-1] < cutoff]:
                del self.events[k]
        self.events.setdefault(key, deque()).append(time.monotonic())

    def reset(self, key: str) -> None:
        self.events.pop(key, None)
