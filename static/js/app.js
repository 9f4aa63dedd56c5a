// Pages: login/sign-up, workspace list, workspace view (file tree, editors, history, sharing, publishing).
// Routes (hash): #/login, #/ (workspace list), #/w/<id>[/<path>].
"use strict";
(function () {
  const SW = (window.SW = window.SW || {});
  const { el, clear, $, fmtTime, fmtSize, debounce, dialog, confirmDialog } = SW.util;
  const api = SW.api;
  const root = () => $("#app");
  const state = { user: null, conn: null, ws: null };

  // ---- messages shown to the user (server errors in words). One slot for problems (error, warning) and one
  // for confirmations (info): a new message replaces the one in its slot, the same message again counts
  // up ("×3") instead of stacking; each can be dismissed (× or Esc) and goes away by itself.
  const slots = {};
  function flash(msg, kind) {
    kind = kind || "error";
    const slot = kind === "info" ? "info" : "problem";
    const box = $("#flash");
    const old = slots[slot];
    let count = 1;
    if (old && old.node.isConnected) {
      if (old.msg === msg && old.kind === kind) count = old.count + 1;
      clearTimeout(old.timer);
      old.node.remove();
    }
    const dismiss = () => {
      n.remove();
      if (slots[slot] && slots[slot].node === n) delete slots[slot];
    };
    const n = el(
      "div",
      { class: "flash " + kind, role: kind === "info" ? "status" : "alert" },
      el("span", { class: "flash-text" }, msg),
      count > 1 ? el("span", { class: "flash-count", title: "shown " + count + " times" }, " ×" + count) : null,
      el("button", { class: "close", "aria-label": "Dismiss", title: "Dismiss (Esc)", onclick: dismiss }, "×"),
    );
    box.appendChild(n);
    slots[slot] = { node: n, msg, kind, count, timer: setTimeout(dismiss, kind === "info" ? 6000 : 20000) };
  }
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Escape" || document.querySelector(".backdrop") || (e.target.closest && e.target.closest(".CodeMirror, .xterm"))) return;
    for (const k of Object.keys(slots)) slots[k].node.querySelector(".close").click();
  });
  function describe(e) {
    if (!e) return "Unknown error";
    const words = {
      offline: "Not connected to the server; retrying.",
      disconnected: "The connection dropped before the server answered.",
      path_refused: "That path is not allowed.",
      not_found: "Not found.",
      quota: "The workspace is over its disk quota.",
      forbidden: "You do not have permission to do that.",
      http_403: "You do not have permission to do that (or the page is stale: reload).",
      nothing_to_save: "Nothing changed since the last version.",
    };
    return (e.message && e.message !== e.code ? e.message : words[e.code]) || words[e.code] || String(e.message || e);
  }
  async function guard(promise, okMsg) {
    try {
      const r = await promise;
      if (okMsg) flash(okMsg, "info");
      return r;
    } catch (e) {
      flash(describe(e));
      throw e;
    }
  }

  function topbar(...extra) {
    return el(
      "header",
      { class: "topbar" },
      el("a", { href: "#/", class: "brand" }, "Sage Workspaces"),
      el("span", { class: "spacer" }),
      ...extra,
      state.user ? el("span", { class: "me" }, state.user.name) : null,
      state.user ? el("button", { class: "secondary", id: "logout", onclick: logout }, "Log out") : null,
    );
  }

  // ---- login / sign-up
  function renderLogin() {
    const user = el("input", { id: "username", name: "username", autocomplete: "username", required: true });
    const pass = el("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
    const form = el(
      "form",
      { class: "card login", "aria-label": "Log in or sign up" },
      el("h1", {}, "Sage Workspaces"),
      el("label", { for: "username" }, "User name"),
      user,
      el("label", { for: "password" }, "Password"),
      pass,
      el("div", { class: "buttons" }, el("button", { type: "submit", id: "login" }, "Log in"), el("button", { type: "button", id: "signup", class: "secondary" }, "Sign up")),
    );
    const go = async (fn) => {
      try {
        state.user = (await fn(user.value.trim(), pass.value)) || { name: user.value.trim() };
        // back to the page that asked for a login (a shared workspace link), else the list
        const next = state.next && state.next !== "#/login" ? state.next : "#/";
        state.next = null;
        if (location.hash === next) route();
        else location.hash = next;
      } catch (e) {
        flash(describe(e));
      }
    };
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      go(api.login);
    });
    form.querySelector("#signup").addEventListener("click", () => {
      if (form.reportValidity()) go(api.signup);
    });
    clear(root()).append(topbar(), el("main", { class: "center" }, form));
    user.focus();
  }

  async function logout() {
    try {
      await api.logout();
    } catch (e) {
      /* logged out locally anyway */
    }
    state.user = null;
    if (state.conn) state.conn.close();
    state.conn = null;
    location.hash = "#/login";
    route();
  }

  // ---- workspace list
  async function renderList() {
    const tbody = el("tbody");
    const name = el("input", { id: "new-ws-name", placeholder: "New workspace name", "aria-label": "New workspace name", required: true });
    const create = el("form", { class: "inline", id: "create-ws" }, name, el("button", { type: "submit" }, "Create"));
    create.addEventListener("submit", async (e) => {
      e.preventDefault();
      const w = await guard(api.createWorkspace(name.value.trim()));
      location.hash = "#/w/" + encodeURIComponent(w.id);
    });
    const table = el("table", { class: "ws-list" }, el("thead", {}, el("tr", {}, el("th", {}, "Name"), el("th", {}, "Owner"), el("th", {}, "Your role"), el("th", {}, "Last activity"), el("th", {}, "Actions"))), tbody);
    clear(root()).append(topbar(), el("main", { class: "page" }, el("h1", {}, "Your workspaces"), create, table));
    let list;
    try {
      list = await api.workspaces();
    } catch (e) {
      if (e.status === 401) return showLogin();
      flash(describe(e));
      return;
    }
    if (!list.length) tbody.appendChild(el("tr", {}, el("td", { colspan: "5", class: "empty" }, "No workspaces yet: create one above.")));
    for (const w of list) tbody.appendChild(wsRow(w));
  }

  function wsRow(w) {
    const owner = w.role === "owner";
    const act = (label, fn, cls) => el("button", { class: "secondary " + (cls || ""), onclick: fn }, label);
    return el(
      "tr",
      { dataset: { ws: w.id } },
      el("td", {}, el("a", { href: "#/w/" + encodeURIComponent(w.id), class: "ws-name" }, w.name)),
      el("td", {}, w.owner || ""),
      el("td", {}, w.role || ""),
      el("td", {}, fmtTime(w.last_activity)),
      el(
        "td",
        { class: "actions" },
        owner
          ? act("Rename", async () => {
              const r = await dialog("Rename workspace", [{ name: "name", label: "New name", value: w.name }], "Rename");
              if (r) await guard(api.renameWorkspace(w.id, r.name)).then(renderList);
            })
          : null,
        act("Copy", async () => {
          const r = await dialog("Copy workspace", [{ name: "name", label: "Name of the copy", value: w.name + " (copy)" }], "Copy");
          if (r) await guard(api.copyWorkspace(w.id, r.name), "Copied.").then(renderList);
        }),
        owner ? act("Share", () => shareDialog(w)) : null,
        owner
          ? act(
              "Delete",
              async () => {
                if (await confirmDialog("Delete workspace “" + w.name + "” and all its files?")) await guard(api.deleteWorkspace(w.id), "Deleted.").then(renderList);
              },
              "danger",
            )
          : null,
      ),
    );
  }

  async function shareDialog(w) {
    let members = [];
    try {
      members = await api.members(w.id);
    } catch (e) {
      /* shown empty */
    }
    const current = members.length ? "Shared with: " + members.map((m) => m.name + " (" + m.role + ")").join(", ") : "Not shared yet.";
    const r = await dialog(
      "Share “" + w.name + "”. " + current,
      [
        { name: "username", label: "User name" },
        { name: "role", label: "Role", options: ["editor", "viewer", "none"], value: "viewer" },
      ],
      "Share",
    );
    if (r && r.username) await guard(api.share(w.id, r.username.trim(), r.role), r.role === "none" ? "Share removed." : "Shared with " + r.username + " as " + r.role + ".");
  }

  // ---- connection status shared by workspace pages
  function ensureConn() {
    if (state.conn) return state.conn;
    const conn = new SW.Conn("/sockjs");
    conn.on("state", (s) => {
      const b = $("#conn-state");
      if (b) {
        b.textContent = { connecting: "connecting…", open: "connected", reconnecting: "reconnecting…", closed: "disconnected" }[s];
        b.className = "conn " + s;
      }
      if (state.ws) state.ws.onConnState(s);
    });
    conn.on("open", () => state.ws && state.ws.onReconnect());
    conn.on("presence", (m) => state.ws && state.ws.onPresence(m));
    conn.on("file_changed", (m) => state.ws && state.ws.onFileChanged(m));
    for (const t of ["term_output", "term_exit", "term_detached"]) conn.on(t, (m) => state.ws && state.ws.onTerminal(m));
    for (const t of ["doc_update", "doc_awareness", "doc_closed"]) conn.on(t, (m) => state.ws && state.ws.onDocFrame(m));
    conn.on("error", (e) => flash("Server error: " + describe(e)));
    conn.on("unauthorized", () => showLogin());
    conn.on("quota", (m) => flash(m.message || "The workspace is over its disk quota."));
    conn.on("closed", () => state.ws && state.ws.onReconnect());
    state.conn = conn;
    return conn;
  }

  function showLogin() {
    state.user = null;
    location.hash = "#/login";
    renderLogin();
  }

  // ---- routing
  async function route() {
    const h = location.hash.replace(/^#/, "") || "/";
    if (state.ws && !h.startsWith("/w/" + encodeURIComponent(state.ws.id))) {
      state.ws.leave();
      state.ws = null;
    }
    if (!state.user) {
      try {
        state.user = await api.me();
      } catch (e) {
        if (e.code !== "http_401") flash(describe(e));
      }
    }
    if (!state.user) {
      if (h !== "/login") state.next = "#" + h;
      return renderLogin();
    }
    if (h === "/login") {
      location.hash = "#/";
      return;
    }
    const m = h.match(/^\/w\/([^/]+)(?:\/(.*))?$/);
    if (m) {
      const id = decodeURIComponent(m[1]);
      const path = m[2] ? decodeURIComponent(m[2]) : null;
      if (state.ws && state.ws.id === id) return state.ws.openPath(path);
      state.ws = new SW.WorkspaceView({ id, path, root: root(), conn: ensureConn(), user: state.user, topbar, flash, describe, guard });
      return;
    }
    renderList();
  }

  // Errors already shown by guard() are not "unhandled".
  window.addEventListener("unhandledrejection", (ev) => {
    if (ev.reason instanceof SW.ApiError) ev.preventDefault();
  });

  SW.app = { flash, describe, guard, state, route };
  window.addEventListener("hashchange", route);
  window.addEventListener("DOMContentLoaded", route);
})();
