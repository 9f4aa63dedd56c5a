"""A stand-in backend speaking the protocol of docs/frontend.md, for testing the browser client until
`sagews dev` exists. In memory; "exec" runs Python in this process (loopback-only test tool, never deployed).

    python tests/browser/fake_backend.py --port 8123
    python tests/browser/fake_backend.py --port 8123 --worker worker.json   # files, git and cells on a real
                                                                           # sagews worker (relay mode)
"""

import argparse
import ast
import asyncio
import base64
import contextlib
import hashlib
import io
import itertools
import json
import re
import secrets
import struct
import time
import traceback
import warnings
import zipfile
import zlib
from pathlib import Path

warnings.filterwarnings("ignore", category=DeprecationWarning)

import tornado.ioloop  # noqa: E402
import tornado.web  # noqa: E402
from browser_helpers import CSP  # noqa: E402
from sockjs.tornado import SockJSConnection, SockJSRouter  # noqa: E402

STATIC = Path(__file__).resolve().parents[2] / "static"
USERS: dict[str, str] = {}
SESSIONS: dict[str, str] = {}  # cookie -> user
WS: dict[str, dict] = {}  # id -> {name, owner, members{user: role}, files{path: text}, commits[], last}
PUB: dict[str, tuple[str, str]] = {}
ids = itertools.count(1)
CONNS: set = set()
RUNNING: dict[str, list] = {}  # workspace -> running exec tasks
WORKER: dict = {}  # relay mode: host, port, cert, key, ca of a real worker
WSESS: dict[str, str] = {}  # relay mode: workspace -> worker session
PREFIX = secrets.token_hex(3)  # worker workspace names are unique per fake backend process
SESSION_OPS = ("ls", "read", "write", "rename", "delete", "history", "save", "exec", "interrupt", "restart")
NON_FINAL = {"stream", "display", "result", "exception"}


def worker_call(kind, fields, on_frame=None):
    """Blocking (run it in a thread): one request on its own worker connection; returns the final frame."""
    from sagews.worker.client import WorkerClient

    w = WORKER
    with WorkerClient(w["host"], w["port"], cert=w["cert"], key=w["key"], ca=w["ca"], timeout=120) as c:
        c.send({"type": kind, "id": 1, **fields})
        while True:
            msg = c.recv()
            if msg is None:
                return {"type": "error", "code": "worker_gone", "message": "The worker closed the connection"}
            if msg.get("re") != 1:
                continue
            if msg["type"] not in NON_FINAL:
                return msg
            if on_frame:
                on_frame(msg)


def commit(w, message, author):
    c = hashlib.sha1(f"{time.time()}{message}{len(w['commits'])}".encode()).hexdigest()  # noqa: S324
    w["commits"].insert(0, {"commit": c, "message": message, "author": author, "date": time.time(),
                            "files": dict(w["files"])})  # fmt: skip
    return c


def role_of(w, user):
    return "owner" if w["owner"] == user else w["members"].get(user)


class Api(tornado.web.RequestHandler):
    def set_default_headers(self):
        self.set_header("Content-Type", "application/json")

    def user(self):
        return SESSIONS.get(self.get_cookie("sid") or "")

    def body(self):
        return json.loads(self.request.body or b"{}")

    def fail(self, status, code, message):
        self.set_status(status)
        self.finish({"code": code, "message": message})

    def prepare(self):
        self.xsrf_token  # noqa: B018 (sets the _xsrf cookie)


class Me(Api):
    def get(self):
        u = self.user()
        self.finish({"user": {"name": u} if u else None})


class Login(Api):
    def post(self, kind):
        b = self.body()
        u, p = b.get("username", ""), b.get("password", "")
        if kind == "signup":
            if u in USERS or not u:
                return self.fail(400, "taken", "That user name is taken")
            USERS[u] = p
        elif kind == "login" and USERS.get(u) != p:
            return self.fail(403, "bad_login", "Wrong user name or password")
        if kind == "logout":
            SESSIONS.pop(self.get_cookie("sid") or "", None)
            return self.finish({})
        sid = secrets.token_hex(16)
        SESSIONS[sid] = u
        self.set_cookie("sid", sid, httponly=True)
        self.finish({"user": {"name": u}})


class Workspaces(Api):
    def get(self):
        u = self.user()
        if not u:
            return self.fail(401, "login", "Log in first")
        out = [dict(id=i, name=w["name"], owner=w["owner"], role=role_of(w, u), last_activity=w["last"])
               for i, w in WS.items() if role_of(w, u)]  # fmt: skip
        self.finish({"workspaces": out})

    def post(self):
        u = self.user()
        i = f"w{next(ids)}"
        WS[i] = {"name": self.body()["name"], "owner": u, "members": {}, "files": {}, "commits": [],
                 "last": time.time()}  # fmt: skip
        self.finish({"workspace": {"id": i, "name": WS[i]["name"]}})


class One(Api):
    def get(self, i, action=None):
        w = WS[i]
        if action == "download":
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as z:
                for path, text in w["files"].items():
                    z.writestr(f"{w['name']}/{path}", text.encode("latin-1", "replace"))
            self.set_header("Content-Type", "application/zip")
            self.set_header("Content-Disposition", f'attachment; filename="{i}.zip"')
            return self.finish(buf.getvalue())
        if action == "published":
            out = [{"path": p, "url": "/pub/" + k} for k, (j, p) in PUB.items() if j == i]
            return self.finish({"published": out})
        if action == "members":
            return self.finish({"members": [{"name": k, "role": v} for k, v in w["members"].items()]})
        self.finish({"workspace": {"id": i, "name": w["name"], "owner": w["owner"]}})

    def delete(self, i, action=None):
        WS.pop(i)
        self.finish({})

    def post(self, i, action):
        w, b, u = WS[i], self.body(), self.user()
        if role_of(w, u) != "owner" and action not in ("publish", "unpublish"):
            return self.fail(403, "forbidden", "Only the owner can do that")
        if action == "rename":
            w["name"] = b["name"]
        elif action == "copy":
            j = f"w{next(ids)}"
            WS[j] = {**w, "name": b["name"], "owner": u, "members": {}, "files": dict(w["files"])}
        elif action == "share":
            if b["username"] not in USERS:
                return self.fail(404, "no_user", f"No user called {b['username']}")
            if b["role"] == "none":
                w["members"].pop(b["username"], None)
            else:
                w["members"][b["username"]] = b["role"]
        elif action == "publish":
            slug = secrets.token_urlsafe(8)
            PUB[slug] = (i, b["path"])
            return self.finish({"url": "/pub/" + slug})
        elif action == "unpublish":
            for k, v in list(PUB.items()):
                if v == (i, b["path"]):
                    PUB.pop(k)
        self.finish({})


class PubRaw(Api):
    async def get(self, slug):
        if slug not in PUB:
            return self.fail(404, "not_found", "Not published")
        i, path = PUB[slug]
        if WORKER:
            loop = asyncio.get_running_loop()
            r = await loop.run_in_executor(None, worker_call, "read", {"session": WSESS[i], "path": path})
            return self.finish({"path": path, "workspace": WS[i]["name"], "text": r.get("text", "")})
        self.finish({"path": path, "workspace": WS[i]["name"], "text": WS[i]["files"].get(path, "")})


class Page(tornado.web.RequestHandler):
    def get(self, *_):
        self.set_header("Content-Security-Policy", CSP)
        name = "pub.html" if self.request.path.startswith("/pub/") else "index.html"
        self.finish((STATIC / name).read_bytes())


class Static(tornado.web.StaticFileHandler):
    def set_extra_headers(self, path):
        self.set_header("Cache-Control", "no-cache")


def run_code(code):
    """Stand-in engine: Python in-process, the last expression's value is the result; `^` means power."""
    frames = []
    out = io.StringIO()
    ns = {}
    val = None
    try:
        tree = ast.parse(code.replace("^", "**"), "<cell>")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        with contextlib.redirect_stdout(out):
            exec(compile(tree, "<cell>", "exec"), ns)  # noqa: S102 (loopback test stand-in)
            if last is not None:
                val = eval(compile(ast.Expression(last.value), "<cell>", "eval"), ns)  # noqa: S307
        if out.getvalue():
            frames.append({"type": "stream", "name": "stdout", "text": out.getvalue()})
        if val is not None:
            frames.append({"type": "result", "data": {"text/plain": repr(val)}})
        return frames, "ok"
    except Exception as e:
        if out.getvalue():
            frames.append({"type": "stream", "name": "stdout", "text": out.getvalue()})
        tb = traceback.format_exc()
        exc = {"type": "exception", "ename": type(e).__name__, "evalue": str(e), "traceback": tb}
        return [*frames, exc], "error"


def make_png(w=240, h=120):
    """A small gradient PNG (so screenshots show a plot-sized image)."""
    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 255 // w, y * 255 // h, 160)) for x in range(w)) for y in range(h)
    )

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    raw = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return base64.b64encode(raw).decode()


PNG = make_png()
HOLD = {"on": False}  # while on, new SockJS connections are refused (tests of reconnecting)


class Drop(tornado.web.RequestHandler):
    """Test hook: /test/drop?hold=1 closes every SockJS connection (and refuses new ones while held)."""

    def get(self):
        HOLD["on"] = self.get_argument("hold", "0") == "1"
        for c in list(CONNS):
            c.session.close(3000, "dropped by test")
        self.finish("ok")


class FileText(tornado.web.RequestHandler):
    def get(self, i, path):
        self.finish(WS[i]["files"].get(path, ""))


class Conn(SockJSConnection):
    def on_open(self, info):
        self.user = SESSIONS.get(info.get_cookie("sid").value if info.get_cookie("sid") else "")
        self.ws = None
        if HOLD["on"]:
            self.session.close(3000, "held")
            return
        if not self.user:
            self.session.close(4001, "login")
            return
        CONNS.add(self)

    def on_close(self):
        CONNS.discard(self)
        self.broadcast_presence()

    def broadcast_presence(self):
        if self.ws:
            users = sorted({c.user for c in CONNS if c.ws == self.ws})
            for c in CONNS:
                if c.ws == self.ws:
                    c.send(json.dumps({"type": "presence", "workspace": self.ws, "users": users}))

    def reply(self, m, **kw):
        self.send(json.dumps({"re": m["id"], **kw}))

    async def relay_open(self, m, w):
        loop = asyncio.get_running_loop()
        if m["workspace"] not in WSESS:
            r = await loop.run_in_executor(
                None, worker_call, "open", {"workspace": f"{PREFIX}-{m['workspace']}"}
            )
            if r["type"] == "error":
                return self.reply(m, **r)
            WSESS[m["workspace"]] = r["session"]
        self.ws = m["workspace"]
        self.reply(m, type="opened", session=self.ws, role=role_of(w, self.user), presence=[])
        self.broadcast_presence()

    async def relay(self, m):
        """A session request, relayed to the worker; its frames come back as they are produced."""
        loop = asyncio.get_running_loop()
        io_loop = tornado.ioloop.IOLoop.current()
        fields = {k: v for k, v in m.items() if k not in ("id", "type")}
        fields["session"] = WSESS[self.ws]
        if m["type"] == "exec" and not fields.get("engine"):
            fields.pop("engine", None)

        def frame(f):
            io_loop.add_callback(self.reply, m, **{k: v for k, v in f.items() if k != "re"})

        final = await loop.run_in_executor(None, worker_call, m["type"], fields, frame)
        self.reply(m, **{k: v for k, v in final.items() if k != "re"})
        if m["type"] == "write" and final["type"] != "error":
            note = json.dumps(
                {"type": "file_changed", "workspace": self.ws, "path": m["path"], "by": self.user}
            )
            for c in CONNS:
                if c is not self and c.ws == self.ws:
                    c.send(note)

    async def ticks(self, m, n):
        """Stand-in for a long computation: one line of output every 0.1 s, interruptible."""
        task = asyncio.current_task()
        RUNNING.setdefault(self.ws, []).append(task)
        try:
            for i in range(n):
                self.reply(m, session=self.ws, type="stream", name="stdout", text=f"tick {i}\n")
                await asyncio.sleep(0.1)
            self.reply(m, type="done", status="ok", elapsed=n * 0.1)
        except asyncio.CancelledError:
            tb = "Traceback (most recent call last):\n  ...\nKeyboardInterrupt\n"
            exc = {"type": "exception", "ename": "KeyboardInterrupt", "evalue": "", "traceback": tb}
            self.reply(m, session=self.ws, **exc)
            self.reply(m, type="done", status="interrupted", elapsed=0.1)
        finally:
            if task in RUNNING.get(self.ws, []):
                RUNNING[self.ws].remove(task)

    def on_message(self, raw):
        m = json.loads(raw)
        t = m["type"]
        if t == "hello":
            return self.reply(m, type="hello", version=1)
        if t == "open":
            w = WS.get(m["workspace"])
            if not w or not role_of(w, self.user):
                return self.reply(m, type="error", code="not_found", message="No such workspace")
            if WORKER:
                return asyncio.ensure_future(self.relay_open(m, w))
            self.ws = m["workspace"]
            self.reply(m, type="opened", session=self.ws, role=role_of(w, self.user), presence=[])
            return self.broadcast_presence()
        if t == "leave":
            ws, self.ws = self.ws, None
            self.reply(m, type="ok")
            if ws:
                users = sorted({c.user for c in CONNS if c.ws == ws})
                for c in CONNS:
                    if c.ws == ws:
                        c.send(json.dumps({"type": "presence", "workspace": ws, "users": users}))
            return None
        w = WS[self.ws]
        ro = role_of(w, self.user) == "viewer"
        if ro and t in ("write", "rename", "delete", "save", "exec", "interrupt", "restart"):
            return self.reply(m, type="error", code="forbidden", message="Read-only: you are a viewer")
        w["last"] = time.time()
        if WORKER and t in SESSION_OPS:
            return asyncio.ensure_future(self.relay(m))
        files = w["files"]
        if t == "ls":
            d = m["path"].strip(".").strip("/")
            pre = d + "/" if d else ""
            seen = {}
            for p, txt in files.items():
                if p.startswith(pre):
                    rest = p[len(pre) :].split("/")
                    seen[rest[0]] = {
                        "name": rest[0],
                        "type": "dir" if len(rest) > 1 else "file",
                        "size": len(txt),
                    }
            return self.reply(m, type="ls", path=m["path"], entries=list(seen.values()))
        if t == "read":
            src = files
            if m.get("commit"):
                src = next(c["files"] for c in w["commits"] if c["commit"] == m["commit"])
            if m["path"] not in src:
                return self.reply(m, type="error", code="not_found", message="No such file")
            return self.reply(m, type="read", path=m["path"], size=len(src[m["path"]]), text=src[m["path"]])
        if t == "write":
            files[m["path"]] = m["text"] if "text" in m else base64.b64decode(m["b64"]).decode("latin-1")
            note = json.dumps(
                {"type": "file_changed", "workspace": self.ws, "path": m["path"], "by": self.user}
            )
            for c in CONNS:
                if c is not self and c.ws == self.ws:
                    c.send(note)
            return self.reply(m, type="write", path=m["path"], size=len(files[m["path"]]))
        if t == "rename":
            files[m["dst"]] = files.pop(m["src"])
            return self.reply(m, type="rename", src=m["src"], dst=m["dst"])
        if t == "delete":
            for p in [p for p in files if p == m["path"] or p.startswith(m["path"] + "/")]:
                files.pop(p)
            return self.reply(m, type="delete", path=m["path"])
        if t == "history":
            cs = [{k: c[k] for k in ("commit", "message", "author", "date")} for c in w["commits"]]
            return self.reply(m, type="history", commits=cs)
        if t == "save":
            if w["commits"] and w["commits"][0]["files"] == files:
                return self.reply(m, type="saved", unchanged=True, commit=w["commits"][0]["commit"])
            return self.reply(m, type="saved", commit=commit(w, m.get("message") or "save", self.user))
        if t == "exec" and m.get("engine", "sage") == "sage":
            msg = "Sage is not installed on this worker"
            return self.reply(m, type="error", code="engine_unavailable", message=msg)
        if t == "exec" and re.fullmatch(r"ticks\(\d+\)", m["code"].strip()):
            return asyncio.ensure_future(self.ticks(m, int(m["code"].strip()[6:-1])))
        if t == "exec":
            if "plot(" in m["code"]:
                frames, status = [{"type": "display", "data": {"image/png": PNG, "text/plain": "plot"}}], "ok"
            else:
                frames, status = run_code(m["code"])
            for f in frames:
                self.reply(m, session=self.ws, **f)
            return self.reply(m, type="done", status=status, elapsed=0.001)
        if t in ("interrupt", "restart"):
            for task in RUNNING.pop(self.ws, []):
                task.cancel()
            return self.reply(m, type="ok")
        self.reply(m, type="error", code="unknown_type", message=t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--worker", help="JSON file {host, port, cert, key, ca}: relay sessions to a real worker")
    a = ap.parse_args()
    if a.worker:
        WORKER.update(json.loads(Path(a.worker).read_text()))
    router = SockJSRouter(Conn, "/sockjs")
    app = tornado.web.Application(
        [
            (r"/api/me", Me),
            (r"/api/(signup|login|logout)", Login),
            (r"/api/workspaces", Workspaces),
            (r"/api/workspaces/([^/]+)", One),
            (r"/api/workspaces/([^/]+)/([a-z]+)", One),
            (r"/pub/([^/]+)/raw", PubRaw),
            (r"/test/drop", Drop),
            (r"/test/file/([^/]+)/(.*)", FileText),
            (r"/static/(.*)", Static, {"path": str(STATIC)}),
            (r"/(pub/.*)?", Page),
            *router.urls,
        ],
        xsrf_cookies=True,
    )
    app.listen(a.port, address="127.0.0.1")
    tornado.ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
