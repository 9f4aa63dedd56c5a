"""Sign up, log in, log out, the current user, account settings."""

from __future__ import annotations

import math
import secrets
from typing import Any

from sagews.backend import accounts
from sagews.backend.accounts import AccountError, User
from sagews.backend.handlers.base import ApiError, ApiHandler


class MeHandler(ApiHandler):
    def get(self) -> None:
        self.xsrf_token  # noqa: B018  (sets the _xsrf cookie the client echoes in X-XSRFToken)
        u = self.current_user
        self.write_json({"user": {"name": u.name, "is_admin": u.is_admin} if u else None})


DEVICE_COOKIE = "sagews_device"
DEVICE_DAYS = 365


class _LoginBase(ApiHandler):
    async def start_session(self, user: User) -> None:
        cfg = self.backend.config
        token, th = accounts.new_token()
        await self.backend.db.run(accounts.new_session, user.id, th, cfg.session_days, self.request.remote_ip)
        self.set_cookie(
            cfg.cookie_name,
            token,
            httponly=True,
            secure=cfg.secure_cookies,
            samesite="Lax",
            expires_days=cfg.session_days,
        )
        self.set_device(user.name)

    def device(self, name: str) -> str | None:
        """This browser's device id for the account ``name`` (a signed cookie from an earlier
        successful login of that account), else None (sagews/backend/lockout.py)."""
        raw = self.get_signed_cookie(DEVICE_COOKIE, max_age_days=DEVICE_DAYS)
        if not raw:
            return None
        account, _, device = raw.decode(errors="replace").partition("|")
        return device if device and account == name.lower() else None

    def set_device(self, name: str) -> None:
        if self.device(name) is None:
            self.set_signed_cookie(
                DEVICE_COOKIE,
                f"{name.lower()}|{secrets.token_urlsafe(12)}",
                httponly=True,
                secure=self.backend.config.secure_cookies,
                samesite="Strict",
                expires_days=DEVICE_DAYS,
            )


class SignupHandler(_LoginBase):
    async def post(self) -> None:
        if not self.backend.config.signup:
            raise ApiError(403, "signup_closed", "Sign-up is closed; ask an administrator for an account")
        b = self.body()
        name = accounts.check_username(b.get("username"))
        password = accounts.check_password(b.get("password"))
        ip = self.request.remote_ip or "?"
        limiter = self.backend.signup_limiter
        if limiter.blocked(f"signup:{ip}"):
            raise ApiError(429, "rate_limited", "Too many attempts; wait a few minutes")
        limiter.hit(f"signup:{ip}")
        pw_hash = await self.backend.password_work.run(accounts.hash_password, password)
        user = await self.backend.db.run(accounts.create_account, name, pw_hash)
        await self.start_session(user)
        self.write_json({"user": {"name": user.name, "is_admin": user.is_admin}})


class LoginHandler(_LoginBase):
    async def post(self) -> None:
        b = self.body()
        name, password = b.get("username"), b.get("password")
        if (
            not isinstance(name, str)
            or not isinstance(password, str)
            or not name
            or len(name) > 200
            or len(password) > accounts.MAX_PASSWORD
        ):
            raise ApiError(400, "bad_field", "username and password are required")
        app = self.backend
        ip, device = self.request.remote_ip or "?", self.device(name)
        verdict = await app.login_guard.check(name, ip, device)
        if verdict.blocked:  # before any password is verified: throttled guessing costs no argon2 time
            app.metrics.logins_limited += 1
            raise LimitedError(verdict.retry_after)
        found = await app.db.run(accounts.find_login, name)
        pw_hash = found[1] if found else None
        ok = await app.password_work.run(accounts.verify_password, pw_hash, password)
        if not ok or found is None or found[2]:
            await app.login_guard.failed(name, ip, device)
            app.metrics.logins_failed += 1
            raise ApiError(403, "bad_login", "Wrong user name or password")
        await app.login_guard.succeeded(name, ip, device)
        app.metrics.logins_ok += 1
        await self.start_session(found[0])
        self.write_json({"user": {"name": found[0].name, "is_admin": found[0].is_admin}})


class LimitedError(ApiError):
    def __init__(self, retry_after: float) -> None:
        wait = max(1, math.ceil(retry_after))
        super().__init__(429, "rate_limited", f"Too many failed logins from here; try again in {wait} s")
        self.retry_after = wait


class LogoutHandler(ApiHandler):
    async def post(self) -> None:
        token = self.get_cookie(self.backend.config.cookie_name)
        if token:
            th = accounts.hash_token(token)
            await self.backend.db.run(accounts.revoke_session, th)
            await self.backend.cache.delete(f"sess:{th}")
            self.backend.sessions_revoked([th])
        self.clear_cookie(self.backend.config.cookie_name)
        self.write_json({})


class AccountHandler(_LoginBase):
    """GET: the account; POST ``{name}`` renames, ``{password, new_password}`` changes the password
    (revokes every session, then starts a fresh one for this browser)."""

    def get(self) -> None:
        u = self.user
        self.write_json({"account": {"name": u.name, "is_admin": u.is_admin}})

    async def post(self) -> None:
        u, b, app = self.user, self.body(), self.backend
        out: dict[str, Any] = {}
        if "new_password" in b:
            new = accounts.check_password(b.get("new_password"))
            current = self.field(b, "password")
            found = await app.db.run(accounts.find_login, u.name)
            work = app.password_work
            if not found or not await work.run(accounts.verify_password, found[1], current):
                raise ApiError(403, "bad_login", "The current password is wrong")
            pw_hash = await work.run(accounts.hash_password, new)
            revoked = await app.db.run(accounts.set_password, u.name, pw_hash)
            await app.cache.delete(*(f"sess:{h}" for h in revoked))
            app.sessions_revoked(revoked)
            await self.start_session(u)
            out["password"] = "changed"  # noqa: S105
        if "name" in b:
            name = accounts.check_username(b.get("name"))
            hashes = await app.db.run(accounts.rename_account, u.id, name)
            await app.cache.delete(*(f"sess:{h}" for h in hashes))
            out["name"] = name
        if not out:
            raise AccountError("bad_field", "Nothing to change: send name or password + new_password")
        self.write_json({"account": out})


routes = [
    (r"/api/me", MeHandler),
    (r"/api/signup", SignupHandler),
    (r"/api/login", LoginHandler),
    (r"/api/logout", LogoutHandler),
    (r"/api/account", AccountHandler),
]
