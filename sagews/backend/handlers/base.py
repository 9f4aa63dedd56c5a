"""Base handlers: the logged-in user from the session cookie, JSON bodies and JSON errors."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

import tornado.web
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SATimeoutError

from sagews.backend.accounts import AccountError, User, hash_token, session_user
from sagews.backend.workspaces import WorkspaceError

if TYPE_CHECKING:
    from sagews.backend.app import BackendApp

log = logging.getLogger("sagews.backend.http")
MAX_JSON_BODY = 1 << 20

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class ApiError(tornado.web.HTTPError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status)
        self.code = code
        self.message = message


async def lookup_user(app: BackendApp, token: str | None) -> User | None:
    """Session token -> User, through memcached (key: the token's hash; deleted on revocation)."""
    if not token or len(token) > 200:
        return None
    th = hash_token(token)
    cached = await app.cache.get(f"sess:{th}")
    if isinstance(cached, dict):
        return User(int(cached["id"]), str(cached["name"]), bool(cached["is_admin"]))
    user = await app.db.run(session_user, th)
    if user is not None:
        await app.cache.set(f"sess:{th}", user.to_dict())
    return user


class BaseHandler(tornado.web.RequestHandler):
    @property
    def backend(self) -> BackendApp:
        return cast("BackendApp", self.application)

    def set_default_headers(self) -> None:
        for k, v in SECURITY_HEADERS.items():
            self.set_header(k, v)

    async def prepare(self) -> None:
        token = self.get_cookie(self.backend.config.cookie_name)
        self.current_user = await lookup_user(self.backend, token)


@tornado.web.stream_request_body
class ApiHandler(BaseHandler):
    """JSON in, JSON out; every error is ``{"code", "message"}`` with a fitting status.

    Bodies are streamed: a declared ``Content-Length`` over ``MAX_JSON_BODY`` is refused (413) before
    any of it is read, and a chunked body stops being read at that size, so no request can make the
    backend buffer more than 1 MiB for it."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")

    async def prepare(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        declared = self.request.headers.get("Content-Length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_JSON_BODY):
            self.backend.metrics.body_refused += 1
            raise ApiError(413, "too_large", f"Request body too large (at most {MAX_JSON_BODY} bytes)")
        if self.request.method in ("POST", "PUT", "PATCH", "DELETE"):
            self.request.connection.set_max_body_size(MAX_JSON_BODY)  # type: ignore[union-attr]
        await super().prepare()

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > MAX_JSON_BODY:
            self.backend.metrics.body_refused += 1
            raise ApiError(413, "too_large", f"Request body too large (at most {MAX_JSON_BODY} bytes)")
        self._chunks.append(chunk)

    @property
    def user(self) -> User:
        if self.current_user is None:
            raise ApiError(401, "login", "Log in first")
        return cast(User, self.current_user)

    def body(self) -> dict[str, Any]:
        raw = b"".join(getattr(self, "_chunks", ())) or b"{}"
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise ApiError(400, "bad_json", "The request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "bad_json", "The request body must be a JSON object")
        return data

    def field(self, data: dict[str, Any], name: str, kind: type = str) -> Any:
        value = data.get(name)
        if not isinstance(value, kind):
            raise ApiError(400, "bad_field", f"Field {name!r} is missing or not a {kind.__name__}")
        return value

    def write_json(self, data: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ApiError | AccountError | WorkspaceError):
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            code, message = exc.code, exc.message
        elif isinstance(exc, AccountError | WorkspaceError):
            self.set_status(exc.status)
            status_code, code, message = exc.status, exc.code, exc.message
        elif isinstance(exc, DBAPIError | SATimeoutError):
            self.set_status(503)
            code, message = "db_unavailable", "The database is unavailable; try again shortly"
        elif isinstance(exc, tornado.web.HTTPError):
            code = "xsrf" if "xsrf" in str(exc.log_message or "").lower() else f"http_{status_code}"
            message = exc.log_message or HTTPStatus(status_code).phrase
            if code == "xsrf":
                message = "Missing or wrong CSRF token (X-XSRFToken header)"
        else:
            code, message = "internal", "Internal server error"
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        out: dict[str, Any] = {"code": code, "message": message}
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            out["retry_after"] = retry_after
            self.set_header("Retry-After", str(retry_after))
        self.finish(json.dumps(out))
