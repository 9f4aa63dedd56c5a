// Everything the client knows about the backend's wire protocol lives in this file (see docs/frontend.md,
// "Protocol the client uses", and docs/protocol-client.md once the backend documents it).
//   * HTTP JSON under /api/ for accounts, workspace management, sharing, publishing, downloads.
//     State-changing requests carry Tornado's _xsrf cookie as the X-XSRFToken header.
//   * One SockJS connection at /sockjs for live workspace work: files, cells, history, presence.
//     Requests {type, id, ...}; every reply frame carries re = id; exec streams frames until "done".
// The rest of the client calls only SW.api.* and SW.Conn.
"use strict";
(function () {
  const SW = (window.SW = window.SW || {});

  class ApiError extends Error {
    constructor(code, message, status) {
      super(message || code);
      this.code = code;
      this.status = status;
    }
  }

  function cookie(name) {
    const m = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return m ? decodeURIComponent(m[1]) : "";
  }

  // Tornado's _xsrf cookie is "2|mask|token|time"; the header must carry the cookie value unchanged.
  function xsrf() {
    return cookie("_xsrf");
  }

  async function http(method, path, body) {
    const opts = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (method !== "GET") {
      opts.headers["X-XSRFToken"] = xsrf();
      if (body !== undefined) {
        opts.headers["Content-Type"] = "application/json";
        opts.body = JSON.stringify(body);
      }
    }
    let resp;
    try {
      resp = await fetch(path, opts);
    } catch (e) {
      throw new ApiError("offline", "Cannot reach the server (" + e.message + ")", 0);
    }
    let data = null;
    const ct = resp.headers.get("Content-Type") || "";
    if (ct.includes("json")) {
      try {
        data = await resp.json();
      } catch (e) {
        data = null;
      }
    }
    if (!resp.ok) {
      const msg = (data && (data.message || data.error)) || resp.status + " " + resp.statusText;
      throw new ApiError((data && data.code) || "http_" + resp.status, msg, resp.status);
    }
    return data || {};
  }

  const enc = encodeURIComponent;
  // Replies are normalized here into the shapes the pages use, so a different field name on the wire is a
  // one-line change in this file.
  const user = (r) => r.user || null; // {name} | null
  const workspace = (r) => r.workspace || r; // {id, name, owner, role, last_activity}
  const api = {
    xsrf,
    // The logged-in user or null. Also makes the backend set the _xsrf cookie.
    me: async () => user(await http("GET", "/api/me")),
    signup: async (username, password) => user(await http("POST", "/api/signup", { username, password })),
    login: async (username, password) => user(await http("POST", "/api/login", { username, password })),
    logout: () => http("POST", "/api/logout", {}),
    // -> [{id, name, owner, role: owner|editor|viewer, last_activity}]
    workspaces: async () => (await http("GET", "/api/workspaces")).workspaces || [],
    createWorkspace: async (name) => workspace(await http("POST", "/api/workspaces", { name })),
    workspace: async (id) => workspace(await http("GET", "/api/workspaces/" + enc(id))),
    renameWorkspace: (id, name) => http("POST", "/api/workspaces/" + enc(id) + "/rename", { name }),
    deleteWorkspace: (id) => http("DELETE", "/api/workspaces/" + enc(id)),
    copyWorkspace: (id, name) => http("POST", "/api/workspaces/" + enc(id) + "/copy", { name }),
    // -> [{name, role}]
    members: async (id) => (await http("GET", "/api/workspaces/" + enc(id) + "/members")).members || [],
    // role: editor | viewer | none (none removes the share)
    share: (id, username, role) => http("POST", "/api/workspaces/" + enc(id) + "/share", { username, role }),
    // -> the URL of the published page ("/pub/<slug>"). A file's current text, or (folder: true) a folder's
    // files as of the last saved version: a read-only site; its path is then "dir/" ("/" = the workspace)
    publish: async (id, path, folder) => (await http("POST", "/api/workspaces/" + enc(id) + "/publish", folder ? { path, folder: true } : { path })).url,
    // -> [{path, url, updated}] of the workspace's published files and sites (site paths end with "/")
    published: async (id) => (await http("GET", "/api/workspaces/" + enc(id) + "/published")).published || [],
    unpublish: (id, path) => http("POST", "/api/workspaces/" + enc(id) + "/unpublish", { path }),
    downloadUrl: (id, format) => "/api/workspaces/" + enc(id) + "/download?format=" + enc(format),
    // Published page data (no login): /pub/<slug>/raw -> {path, workspace, text|b64, published} for a file,
    // {path: "dir/", workspace, published, site: {files: [{path, size}], skipped}} for a site, whose
    // files are at /pub/<slug>/raw?path=<path relative to the site>
    pubRaw: (slug, path) => http("GET", "/pub/" + enc(slug) + "/raw" + (path ? "?path=" + enc(path) : "")),
  };

  // ---- SockJS connection: reconnects by itself; the app re-opens its workspace on "open".
  class Conn {
    constructor(url) {
      this.url = url || "/sockjs";
      this.nextId = 1;
      this.pending = new Map(); // id -> {resolve, reject, onFrame}
      this.listeners = {};
      this.state = "connecting"; // connecting | open | reconnecting | closed
      this.backoff = 500;
      this.closedByUs = false;
      this.queue = [];
      this._connect();
      window.addEventListener("online", () => this._retryNow());
    }

    on(ev, fn) {
      (this.listeners[ev] = this.listeners[ev] || []).push(fn);
    }

    _emit(ev, arg) {
      for (const fn of this.listeners[ev] || []) {
        try {
          fn(arg);
        } catch (e) {
          console.warn("listener", ev, e); // eslint-disable-line no-console
        }
      }
    }

    _setState(s) {
      this.state = s;
      this._emit("state", s);
    }

    _connect() {
      let sock;
      try {
        sock = new window.SockJS(this.url, null, { transports: ["websocket", "xhr-streaming", "xhr-polling"] });
      } catch (e) {
        this._scheduleReconnect();
        return;
      }
      this.sock = sock;
      sock.onopen = async () => {
        this.backoff = 500;
        let hello = null;
        try {
          hello = await this._request({ type: "hello", versions: [1], xsrf: xsrf() }, null, true);
        } catch (e) {
          // A backend without a hello step answers unknown_type: carry on. Anything else is shown.
          if (e.code === "disconnected") return;
          if (e.code !== "unknown_type" && e.code !== "bad_message") this._emit("error", e);
        }
        if (this.sock !== sock) return;
        this.hello = hello;
        this._setState("open");
        this._emit("open", hello);
      };
      sock.onmessage = (m) => this._onMessage(m.data);
      sock.onclose = (ev) => {
        if (this.sock !== sock) return;
        this.sock = null;
        for (const [, p] of this.pending) p.reject(new ApiError("disconnected", "Connection lost before the server answered"));
        this.pending.clear();
        if (this.closedByUs) {
          this._setState("closed");
          return;
        }
        if (ev && ev.code === 4001) {
          // the server says we are not logged in any more
          this._setState("closed");
          this._emit("unauthorized", ev);
          return;
        }
        this._scheduleReconnect();
      };
    }

    _scheduleReconnect() {
      this._setState("reconnecting");
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this._connect(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 8000);
    }

    _retryNow() {
      if (this.state === "reconnecting") {
        this.backoff = 500;
        clearTimeout(this.timer);
        this._connect();
      }
    }

    close() {
      this.closedByUs = true;
      clearTimeout(this.timer);
      if (this.sock) this.sock.close();
    }

    _onMessage(raw) {
      let msg;
      try {
        msg = typeof raw === "string" ? JSON.parse(raw) : raw;
      } catch (e) {
        return;
      }
      if (msg.re === undefined || msg.re === null) {
        // unsolicited: presence, quota, closed, shutdown, error without request, file_changed ...
        if (msg.type === "error") this._emit("error", new ApiError(msg.code, msg.message));
        this._emit(msg.type, msg);
        this._emit("unsolicited", msg);
        return;
      }
      const p = this.pending.get(msg.re);
      if (!p) return;
      if (msg.type === "error") {
        this.pending.delete(msg.re);
        p.reject(new ApiError(msg.code, msg.message));
      } else if (p.onFrame && msg.type !== "done") {
        p.onFrame(msg);
      } else {
        this.pending.delete(msg.re);
        p.resolve(msg);
      }
    }

    // One request; resolves with the final frame. onFrame gets streaming frames (exec).
    _request(req, onFrame, evenIfNotOpen) {
      return new Promise((resolve, reject) => {
        if (!this.sock || (!evenIfNotOpen && this.state !== "open")) {
          reject(new ApiError("offline", "Not connected (reconnecting…)"));
          return;
        }
        const id = this.nextId++;
        this.pending.set(id, { resolve, reject, onFrame });
        this.sock.send(JSON.stringify(Object.assign({ id }, req)));
      });
    }

    request(type, fields, onFrame) {
      return this._request(Object.assign({ type }, fields || {}), onFrame);
    }
  }

  // Workspace session operations (fields as in docs/frontend.md), replies normalized for the pages.
  function session(conn, workspace) {
    let sid = null;
    const r = (type, f, onFrame) => conn.request(type, Object.assign({ session: sid }, f || {}), onFrame);
    return {
      // -> {session, role, presence: [names]}
      open: async () => {
        const m = await conn.request("open", { workspace });
        sid = m.session;
        return { session: m.session, role: m.role, presence: m.presence || m.members || [] };
      },
      // -> [{name, type: file|dir|link, size, mtime}]
      ls: async (path) => (await r("ls", { path: path || "." })).entries || [],
      // -> {text} or {b64}, and size
      read: async (path, commit) => {
        const m = await r("read", commit ? { path, commit } : { path });
        return { text: m.text, b64: m.b64, size: m.size };
      },
      // data: {text} or {b64}; -> {path, size, warning?} (warning: e.g. a notebook nbformat finds invalid)
      write: (path, data) => r("write", Object.assign({ path }, data)),
      rename: (src, dst) => r("rename", { src, dst }),
      remove: (path) => r("delete", { path }),
      mkdir: (path) => r("write", { path: path.replace(/\/+$/, "") + "/.keep", text: "" }),
      // -> [{commit, author, date, message}], newest first
      history: async (limit) => (await r("history", { limit: limit || 100 })).commits || [],
      // -> {commit, unchanged}
      save: async (message) => {
        const m = await r("save", { message });
        return { commit: m.commit, unchanged: !!m.unchanged };
      },
      // onFrame gets stream/display/result/exception frames; resolves with the final "done" frame
      exec: (code, engine, onFrame) => r("exec", { code, engine }, onFrame),
      // this page no longer shows the workspace (presence); the engine keeps running for the others
      leave: () => (sid ? r("leave") : Promise.resolve()),
      interrupt: () => r("interrupt"),
      restart: () => r("restart"),
      // Tab completion: cursor and the reply's start/end are code-point offsets -> {matches, start, end}
      complete: (code, cursor, engine) => r("complete", { code, cursor, engine }),
      // terminals (docs/protocol-client.md "Terminals"); output arrives unsolicited (term_output, term_exit,
      // term_detached) to the connection attached by termOpen/termAttach
      termList: async () => (await r("term_list")).terminals || [],
      termOpen: (rows, cols) => r("term_open", { rows, cols }), // -> {terminal, rows, cols}
      termAttach: (terminal) => r("term_attach", { terminal }), // -> {terminal, replay}
      termInput: (terminal, data) => r("term_input", { terminal, data }),
      termResize: (terminal, rows, cols) => r("term_resize", { terminal, rows, cols }),
      termClose: (terminal) => r("term_close", { terminal }),
      // shared text documents (docs/protocol-client.md "Shared documents", js/collab.js): Yjs updates and
      // state vectors as base64; other people's updates arrive unsolicited (doc_update, doc_awareness,
      // doc_closed) to a connection that sent doc_open
      docOpen: (path, state, doc) => r("doc_open", Object.assign({ path }, state ? { state } : {}, doc ? { doc } : {})), // -> {doc, update, state, reset}
      docUpdate: (path, update) => r("doc_update", { path, update }),
      docAwareness: (path, update) => r("doc_awareness", { path, update }),
      docClose: (path) => (sid ? r("doc_close", { path }) : Promise.resolve()),
    };
  }

  SW.ApiError = ApiError;
  SW.api = api;
  SW.Conn = Conn;
  SW.session = session;
})();
