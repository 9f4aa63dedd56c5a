// The workspace's terminals: a tab per terminal (xterm.js), a shell on the worker confined like the
// workspace's code. Frames: docs/protocol-client.md "Terminals" (term_open, term_attach with its replay,
// term_input, term_resize, term_close, term_list; term_output, term_exit, term_detached unsolicited).
// A reloaded page lists the workspace's terminals and reattaches to them by id. Viewers get none.
"use strict";
(function () {
  const SW = (window.SW = window.SW || {});
  const { el, clear } = SW.util;

  // xterm.js writes its theme and cell sizes into <style> elements and, for 24-bit colours, `style`
  // attributes; the page's CSP (style-src 'self', no 'unsafe-inline') refuses both (even an empty <style>
  // in the page is reported). The CSSOM is allowed: createElement("style") gives an inert <template> whose
  // text goes into a constructable stylesheet adopted by the document, and setAttribute("style") on xterm's
  // spans becomes style.cssText. Nothing else in the client makes either.
  let shimmed = false;
  function cspSafeStyles() {
    if (shimmed) return;
    shimmed = true;
    const create = Document.prototype.createElement;
    Document.prototype.createElement = function (tag, opts) {
      if (String(tag).toLowerCase() !== "style") return create.call(this, tag, opts);
      const node = create.call(this, "template");
      adoptSheet(this, node);
      return node;
    };
    const setAttr = Element.prototype.setAttribute;
    Element.prototype.setAttribute = function (name, value) {
      if (name === "style" && this instanceof HTMLSpanElement && (!this.isConnected || this.closest(".xterm"))) {
        this.style.cssText = String(value);
        return;
      }
      return setAttr.call(this, name, value);
    };
  }
  function adoptSheet(doc, node) {
    const sheet = new CSSStyleSheet();
    let text = "";
    const prop = {
      configurable: true,
      get: () => text,
      set: (v) => {
        text = String(v);
        sheet.replaceSync(text);
      },
    };
    Object.defineProperty(node, "textContent", prop);
    Object.defineProperty(node, "innerText", prop);
    doc.adoptedStyleSheets = [...doc.adoptedStyleSheets, sheet];
    const remove = node.remove.bind(node);
    node.remove = () => {
      doc.adoptedStyleSheets = doc.adoptedStyleSheets.filter((s) => s !== sheet);
      remove();
    };
  }

  class TerminalPanel {
    // o: {session (SW.session), workspace (id), flash, describe}
    constructor(o) {
      Object.assign(this, o);
      this.terms = new Map(); // terminal id -> {term, fit, box, tab, ended}
      this.active = null;
      this.tabsEl = el("div", { class: "term-tabs", role: "tablist", "aria-label": "Terminals" });
      this.newBtn = el("button", { class: "secondary small", id: "new-terminal", onclick: () => this.open() }, "+ Terminal");
      this.screens = el("div", { class: "term-screens" });
      this.node = el("section", { class: "terminals", id: "terminal-view", hidden: true, "aria-label": "Terminals" }, el("div", { class: "term-bar" }, this.tabsEl, this.newBtn), this.screens);
      this.onWindowResize = () => this.fitActive();
      window.addEventListener("resize", this.onWindowResize);
    }

    get shown() {
      return !this.node.hidden;
    }

    // Show the panel: reattach to the workspace's terminals, or open the first one.
    async show() {
      this.node.hidden = false;
      sessionStorage.setItem("sagews:terminal:" + this.workspace, "1");
      await this.sync();
      if (!this.terms.size) await this.open();
      else this.activate(this.active || [...this.terms.keys()][0]);
    }

    hide() {
      this.node.hidden = true;
      sessionStorage.removeItem("sagews:terminal:" + this.workspace);
    }

    wasShown() {
      return sessionStorage.getItem("sagews:terminal:" + this.workspace) === "1";
    }

    // Attach to every terminal of the workspace (after a reload or a reconnect: the replay redraws them).
    async sync() {
      let listed;
      try {
        listed = await this.session.termList();
      } catch (e) {
        this.flash("Terminals: " + this.describe(e));
        return;
      }
      const alive = new Set(listed.map((t) => t.terminal));
      for (const [id, t] of this.terms) if (!alive.has(id) && !t.ended) this.ended(id, "the terminal is gone");
      for (const t of listed) await this.attach(t.terminal);
    }

    async attach(id) {
      let r;
      try {
        r = await this.session.termAttach(id);
      } catch (e) {
        if (this.terms.has(id)) this.ended(id, this.describe(e));
        return;
      }
      const t = this.terms.get(id) || this.add(id);
      t.ended = false;
      t.tab.classList.remove("ended");
      t.term.reset();
      // the replay is parsed asynchronously: follow its end once it is in (a hidden terminal's
      // viewport otherwise stays at the top of what was replayed)
      t.term.write(r.replay || "", () => t.term.scrollToBottom());
      this.resizeTo(id);
    }

    async open() {
      const size = this.estimate();
      let r;
      try {
        r = await this.session.termOpen(size.rows, size.cols);
      } catch (e) {
        this.flash("Could not open a terminal: " + this.describe(e));
        return;
      }
      this.add(r.terminal);
      this.activate(r.terminal);
    }

    add(id) {
      cspSafeStyles();
      // opened in a visible box (xterm measures its character cell there), hidden again below unless active
      const box = el("div", { class: "term-screen", dataset: { terminal: id } });
      for (const x of this.terms.values()) x.box.hidden = true;
      this.screens.append(box);
      const term = new window.Terminal({ fontSize: 13, scrollback: 5000, cursorBlink: true, fontFamily: "ui-monospace, Menlo, Consolas, monospace", theme: { background: "#1e1e1e" } });
      const fit = new window.FitAddon.FitAddon();
      term.loadAddon(fit);
      term.open(box);
      term.textarea && term.textarea.setAttribute("aria-label", "Terminal input");
      term.onData((data) => this.session.termInput(id, data).catch(() => {})); // sent at once, in order
      term.onResize(({ rows, cols }) => this.session.termResize(id, rows, cols).catch(() => {}));
      const n = this.terms.size + 1;
      const close = el("button", { class: "icon term-close", title: "Close terminal " + n, "aria-label": "Close terminal " + n, onclick: () => this.close(id) }, "✕");
      const tab = el("span", { class: "term-tab", dataset: { terminal: id } }, el("button", { class: "link", role: "tab", onclick: () => this.activate(id) }, "Terminal " + n), close);
      this.tabsEl.append(tab);
      const t = { term, fit, box, tab, ended: false };
      this.terms.set(id, t);
      if (this.active && this.active !== id && this.terms.has(this.active)) {
        box.hidden = true;
        this.terms.get(this.active).box.hidden = false;
      }
      return t;
    }

    activate(id) {
      const t = this.terms.get(id);
      if (!t) return;
      this.active = id;
      for (const [tid, x] of this.terms) {
        x.box.hidden = tid !== id;
        x.tab.classList.toggle("current", tid === id);
        x.tab.querySelector("[role=tab]").setAttribute("aria-selected", String(tid === id));
      }
      this.resizeTo(id);
      t.term.refresh(0, t.term.rows - 1); // drawn while hidden: draw it now
      t.term.focus();
    }

    fitActive() {
      if (this.shown && this.active) this.resizeTo(this.active);
    }

    resizeTo(id) {
      const t = this.terms.get(id);
      if (!t || t.box.hidden || !this.shown) return;
      try {
        t.fit.fit(); // onResize sends term_resize when the size changed
      } catch (e) {
        /* not laid out yet */
      }
    }

    // rows and cols for a new terminal, before it exists: the panel's size over a 13 px monospace cell
    estimate() {
      const w = this.screens.clientWidth || 640;
      const h = this.screens.clientHeight || 360;
      return { rows: Math.max(5, Math.min(200, Math.floor(h / 17))), cols: Math.max(20, Math.min(400, Math.floor(w / 7.8))) };
    }

    async close(id) {
      const t = this.terms.get(id);
      if (!t) return;
      if (!t.ended) await this.session.termClose(id).catch(() => {});
      t.term.dispose();
      t.box.remove();
      t.tab.remove();
      this.terms.delete(id);
      if (this.active === id) {
        this.active = null;
        const next = [...this.terms.keys()][0];
        if (next) this.activate(next);
      }
    }

    ended(id, why) {
      const t = this.terms.get(id);
      if (!t || t.ended) return;
      t.ended = true;
      t.tab.classList.add("ended");
      t.term.write("\r\n\x1b[2m[" + why + "]\x1b[0m\r\n");
    }

    // unsolicited frames (app.js routes them here)
    onFrame(m) {
      if (m.session !== this.workspace) return;
      const t = this.terms.get(m.terminal);
      if (!t) return;
      if (m.type === "term_output") t.term.write(m.data);
      else if (m.type === "term_exit") this.ended(m.terminal, "process " + (m.message || "ended"));
      else if (m.type === "term_detached") this.ended(m.terminal, "detached: " + (m.reason || "by the server"));
    }

    // the role changed to viewer, or the page leaves the workspace
    dispose() {
      window.removeEventListener("resize", this.onWindowResize);
      for (const t of this.terms.values()) t.term.dispose();
      this.terms.clear();
      clear(this.screens);
      clear(this.tabsEl);
      this.node.remove();
    }
  }

  SW.TerminalPanel = TerminalPanel;
})();
