// A shared text document (docs/protocol-client.md "Shared documents"): the open text file as a Yjs
// document bound to its CodeMirror (y-codemirror), kept in sync with the one authority, the workspace's
// worker. Local edits are sent as Yjs updates (one request in flight, the rest merged meanwhile);
// everybody else's arrive as unsolicited doc_update frames. On (re)connect, doc_open sends this copy's
// state vector: the reply holds what we lack, and we send what the server lacks (edits made offline),
// so nothing is overwritten. Other people's cursors come as awareness updates (y-protocols), drawn here
// with CodeMirror marks and bookmarks (no inline style attributes: the page's CSP forbids them).
"use strict";
(function () {
  const SW = (window.SW = window.SW || {});
  const { b64FromBytes, bytesFromB64, el } = SW.util;
  const REMOTE = "remote";
  const BATCH_MS = 25; // local edits merged into one update
  const CURSOR_MS = 120; // cursor (awareness) updates at most this often
  const COLORS = ["#d9480f", "#1971c2", "#2f9e44", "#ae3ec9", "#e8590c", "#0c8599", "#c2255c", "#5c940d"];

  function lib() {
    if (!window.SWCollabLib) throw new Error("the collaboration library (vendor/yjs/collab.js) is missing");
    return window.SWCollabLib;
  }

  function colorFor(name) {
    let h = 0;
    for (const ch of String(name)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return COLORS[h % COLORS.length];
  }

  // the smallest edit turning `old` into `now` (common prefix and suffix kept), applied to a Y.Text
  function replaceText(ytext, now) {
    const old = ytext.toString();
    let p = 0;
    const n = Math.min(old.length, now.length);
    while (p < n && old[p] === now[p]) p++;
    let s = 0;
    while (s < n - p && old[old.length - 1 - s] === now[now.length - 1 - s]) s++;
    ytext.doc.transact(() => {
      if (old.length - p - s > 0) ytext.delete(p, old.length - p - s);
      if (now.length - p - s > 0) ytext.insert(p, now.slice(p, now.length - s));
    });
  }

  class SharedText {
    // o: {session, path, cm, user, readOnly, onState(), onError(e)}
    constructor(o) {
      Object.assign(this, o);
      this.docId = null;
      this.pending = null; // local updates not sent yet (merged)
      this.inflight = false;
      this.unsynced = false; // a send failed: the next doc_open's state-vector sync carries it
      this.joined = false;
      this.closed = false;
      this.marks = new Map(); // awareness client id -> [CodeMirror marks/bookmarks]
      this.early = []; // frames that arrived while doc_open was under way
      this.makeDoc();
    }

    get dirty() {
      return !!this.pending || this.inflight || this.unsynced || !this.joined;
    }

    makeDoc() {
      const { Y, awarenessProtocol } = lib();
      if (this.binding) this.binding.destroy();
      if (this.awareness) this.awareness.destroy();
      if (this.ydoc) this.ydoc.destroy();
      this.clearCursors();
      this.ydoc = new Y.Doc();
      this.ytext = this.ydoc.getText("text");
      this.undo = new Y.UndoManager(this.ytext);
      this.binding = null;
      this.ydoc.on("update", (u, origin) => {
        if (origin !== REMOTE) this.local(u);
      });
      this.awareness = new awarenessProtocol.Awareness(this.ydoc);
      this.awareness.on("update", ({ added, updated, removed }, origin) => {
        if (origin === REMOTE || this.readOnly || !this.joined) return;
        const changed = added.concat(updated, removed);
        const u = awarenessProtocol.encodeAwarenessUpdate(this.awareness, changed);
        this.session.docAwareness(this.path, b64FromBytes(u)).catch(() => {});
      });
      this.awareness.on("change", () => this.drawCursors());
    }

    bind() {
      const { CodemirrorBinding } = lib();
      // no awareness object: y-codemirror would draw cursors with style attributes (CSP); see drawCursors
      this.binding = new CodemirrorBinding(this.ytext, this.cm, null, { yUndoManager: this.undo });
      if (!this.cursorHooked) {
        this.cursorHooked = true;
        this.cm.on("cursorActivity", () => this.sendCursor());
        this.cm.on("blur", () => this.awareness && this.awareness.setLocalStateField("cursor", null));
      }
    }

    // doc_open (first time or after a reconnect); draft: text to merge in as this user's edit
    async connect(draft) {
      const { Y } = lib();
      this.joined = false;
      this.early = [];
      const had = this.docId;
      const state = had ? b64FromBytes(Y.encodeStateVector(this.ydoc)) : undefined;
      const r = await this.session.docOpen(this.path, state, had || undefined);
      if (this.closed) return;
      let local = null;
      if (had && r.doc !== had) {
        // the worker has another instance of the document (it was unloaded or the worker restarted):
        // our state vector means nothing there. Start from its text; our unsent edits go in as an edit.
        if (this.dirty && (this.pending || this.unsynced)) local = this.ytext.toString();
        this.makeDoc();
      }
      this.docId = r.doc;
      Y.applyUpdate(this.ydoc, bytesFromB64(r.update), REMOTE);
      for (const m of this.early.splice(0)) this.apply(m);
      if (!this.binding) this.bind();
      this.pending = null;
      this.unsynced = false;
      this.joined = true;
      // what the server lacks of ours: edits made while disconnected
      const mine = Y.encodeStateAsUpdate(this.ydoc, bytesFromB64(r.state));
      if (mine.length > 2) this.local(mine);
      const merge = local !== null ? local : draft;
      if (typeof merge === "string" && merge !== this.ytext.toString() && !this.readOnly) replaceText(this.ytext, merge);
      this.sendCursor();
      this.onState();
    }

    local(u) {
      if (this.readOnly) return;
      const { Y } = lib();
      this.pending = this.pending ? Y.mergeUpdates([this.pending, u]) : u;
      this.onState();
      this.schedule(BATCH_MS);
    }

    // keystrokes within BATCH_MS go as one update, one request in flight: well under the connection's
    // request rate (docs/protocol-client.md) however fast anyone types
    schedule(ms) {
      if (this.timer) return;
      this.timer = setTimeout(() => {
        this.timer = null;
        this.flush();
      }, ms);
    }

    async flush() {
      if (this.inflight || !this.pending || !this.joined || this.closed) return;
      const { Y } = lib();
      const u = this.pending;
      this.pending = null;
      this.inflight = true;
      let retry = 0;
      try {
        await this.session.docUpdate(this.path, b64FromBytes(u));
      } catch (e) {
        this.pending = this.pending ? Y.mergeUpdates([u, this.pending]) : u; // kept: sent again
        if (e.code === "offline" || e.code === "disconnected") this.unsynced = true; // the next connect syncs it
        else if (e.code === "rate_limited" || e.code === "busy") retry = 250;
        else {
          this.unsynced = true;
          this.onError(e);
        }
      } finally {
        this.inflight = false;
      }
      if (this.pending && !this.unsynced) this.schedule(retry || BATCH_MS);
      this.onState();
    }

    // resolves true once the server has every local edit (false when offline)
    async settle() {
      for (let i = 0; i < 400 && (this.pending || this.inflight) && !this.unsynced; i++) await new Promise((res) => setTimeout(res, 25));
      return !this.dirty;
    }

    remote(m) {
      if (this.closed) return;
      if (!this.joined) {
        // an update relayed before our doc_opened reply (the backend subscribes us first): kept, and
        // applied after the snapshot (applying an update twice changes nothing)
        this.early.push(m);
        return;
      }
      this.apply(m);
    }

    apply(m) {
      if (m.doc !== this.docId) return;
      const { Y, awarenessProtocol } = lib();
      if (m.type === "doc_update") Y.applyUpdate(this.ydoc, bytesFromB64(m.update), REMOTE);
      else if (m.type === "doc_awareness") awarenessProtocol.applyAwarenessUpdate(this.awareness, bytesFromB64(m.update), REMOTE);
    }

    setText(text) {
      replaceText(this.ytext, text);
    }

    // ---- cursors (awareness)
    sendCursor() {
      if (this.cursorTimer) return;
      this.cursorTimer = setTimeout(() => {
        this.cursorTimer = null;
        this.sendCursorNow();
      }, CURSOR_MS);
    }

    sendCursorNow() {
      if (!this.awareness || this.readOnly || !this.joined || this.closed) return;
      const { Y } = lib();
      const c = this.cm;
      if (!c.hasFocus()) return;
      const idx = (pos) => Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(this.ytext, c.indexFromPos(pos)));
      this.awareness.setLocalState({
        user: { name: this.user, color: colorFor(this.user) },
        cursor: { anchor: idx(c.getCursor("anchor")), head: idx(c.getCursor("head")) },
      });
    }

    clearCursors() {
      for (const ms of this.marks.values()) for (const m of ms) m.clear();
      this.marks.clear();
    }

    drawCursors() {
      if (!this.awareness) return;
      const { Y } = lib();
      this.clearCursors();
      const c = this.cm;
      this.awareness.getStates().forEach((st, id) => {
        if (id === this.ydoc.clientID || !st || !st.cursor || !st.user) return;
        const abs = (j) => Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(j), this.ydoc);
        const a = abs(st.cursor.anchor);
        const h = abs(st.cursor.head);
        if (!a || !h) return;
        const color = typeof st.user.color === "string" && /^#[0-9a-f]{6}$/i.test(st.user.color) ? st.user.color : "#888888";
        const name = String(st.user.name || "?").slice(0, 64);
        const caret = el("span", { class: "remote-caret", title: name }, el("span", { class: "remote-name" }, name));
        caret.style.borderColor = color; // CSSOM, not a style attribute: allowed by the CSP
        caret.firstChild.style.backgroundColor = color;
        const ms = [c.setBookmark(c.posFromIndex(h.index), { widget: caret, insertLeft: true })];
        if (a.index !== h.index) {
          const from = c.posFromIndex(Math.min(a.index, h.index));
          const to = c.posFromIndex(Math.max(a.index, h.index));
          ms.push(c.markText(from, to, { className: "remote-selection", css: "background-color: " + color + "40" }));
        }
        this.marks.set(id, ms);
      });
    }

    close() {
      this.closed = true;
      this.clearCursors();
      if (this.awareness) {
        const { awarenessProtocol } = lib();
        awarenessProtocol.removeAwarenessStates(this.awareness, [this.ydoc.clientID], "close");
      }
      if (this.binding) this.binding.destroy();
      this.session.docClose(this.path).catch(() => {});
    }
  }

  SW.collab = { SharedText, replaceText };
})();
