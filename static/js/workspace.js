// The workspace page: file tree, one open document, save state, history, presence, publish.
"use strict";
(function () {
  const SW = (window.SW = window.SW || {});
  const { el, clear, fmtTime, fmtSize, debounce, dialog, confirmDialog, b64FromBytes, bytesFromB64, downloadBlob } = SW.util;
  const api = SW.api;
  const AUTOSAVE_MS = 1500;
  const MAX_UPLOAD = 10 * 1024 * 1024; // one frame to the worker (base64 grows it by a third; frames <= 16 MB)
  const draftKey = (ws, path) => "sagews:draft:" + ws + ":" + path;

  function join(dir, name) {
    return dir === "." || !dir ? name : dir + "/" + name;
  }
  function validName(n) {
    return n && !n.includes("/") && n !== "." && n !== ".." && !n.startsWith(".git");
  }

  class WorkspaceView {
    constructor(o) {
      Object.assign(this, o);
      this.session = SW.session(this.conn, this.id);
      this.dir = ".";
      this.doc = null;
      this.dirty = false;
      this.saving = false;
      this.started = false;
      this.role = "viewer";
      this.autosave = debounce(() => this.write(), AUTOSAVE_MS);
      this.saveDraft = debounce(() => this.storeDraft(), 300);
      this.onPageHide = () => this.storeDraft();
      window.addEventListener("pagehide", this.onPageHide);
      this.build();
      if (this.conn.state === "open") this.start();
      this.onConnState(this.conn.state);
    }

    get readOnly() {
      return this.role === "viewer";
    }

    build() {
      this.nameEl = el("span", { class: "ws-title" }, "…");
      this.presenceEl = el("span", { class: "presence", "aria-label": "Who is here" });
      this.connEl = el("span", { id: "conn-state", class: "conn", role: "status" }, "connecting…");
      this.roleEl = el("span", { class: "role-badge" });
      this.treeEl = el("ul", { class: "tree", "aria-label": "Files" });
      this.crumbEl = el("div", { class: "crumbs" });
      this.treeTools = el("div", { class: "tree-tools" });
      this.siteEl = el("div", { class: "site-state" });
      this.docHead = el("div", { class: "doc-head" });
      this.docBox = el("div", { class: "doc-box" });
      this.saveEl = el("span", { id: "save-state", class: "save-state", role: "status", dataset: { state: "saved" } }, "");
      this.historyEl = el("aside", { class: "history", hidden: true, "aria-label": "History" });
      this.upload = el("input", { type: "file", class: "hidden-input", "aria-label": "Upload a file", multiple: true, onchange: () => this.doUpload() });
      this.docMain = el("main", { class: "doc" }, this.docHead, this.docBox);
      // the workspace's terminals (static/js/terminal.js): owners and editors only
      this.termBtn = el("button", { class: "secondary small", id: "terminal-toggle", hidden: true, "aria-pressed": "false", onclick: () => this.showTerminal(!(this.terms && this.terms.shown)) }, "Terminal");
      const dl = (fmt, label) => el("a", { class: "button secondary", href: api.downloadUrl(this.id, fmt), download: "" }, label);
      // on narrow screens the file list is a drawer over the document, opened with this button
      this.filesBtn = el("button", { class: "secondary small files-toggle", id: "files-toggle", "aria-expanded": "false", "aria-controls": "files-nav", onclick: () => this.toggleFiles() }, "☰ Files");
      this.filesNav = el("nav", { class: "files", id: "files-nav", "aria-label": "Files" }, this.treeTools, this.crumbEl, this.treeEl, this.siteEl, this.upload);
      this.filesNav.addEventListener("keydown", (e) => {
        if (e.key === "Escape" && this.filesNav.classList.contains("open") && !document.querySelector(".backdrop")) {
          this.toggleFiles(false);
          this.filesBtn.focus();
        }
      });
      clear(this.root).append(
        this.topbar(this.presenceEl, this.connEl),
        el(
          "div",
          { class: "ws-bar" },
          this.filesBtn,
          el("a", { href: "#/", class: "back" }, "← Workspaces"),
          this.nameEl,
          this.roleEl,
          this.termBtn,
          el("span", { class: "spacer" }),
          dl("bundle", "Download .bundle"),
          dl("zip", "Download .zip"),
        ),
        (this.wsMain = el("div", { class: "ws-main" }, this.filesNav, this.docMain, this.historyEl)),
      );
      api.workspace(this.id).then(
        (w) => {
          this.meta = w;
          this.nameEl.textContent = w.name || this.id;
          document.title = (w.name || this.id) + " — Sage Workspaces";
        },
        () => (this.nameEl.textContent = this.id),
      );
    }

    async start() {
      let info;
      try {
        info = await this.session.open();
      } catch (e) {
        this.flash("Could not open the workspace: " + this.describe(e));
        return;
      }
      this.started = true;
      this.role = info.role || (this.meta && this.meta.role) || "editor"; // the server enforces it either way
      this.roleEl.textContent = this.readOnly ? "read-only (viewer)" : this.role;
      this.roleEl.className = "role-badge " + this.role;
      document.body.classList.toggle("read-only", this.readOnly);
      this.onPresence({ users: info.presence });
      this.setupTerminals();
      this.renderTreeTools();
      await this.refreshTree();
      if (this.doc && this.doc.collab) {
        // reconnect: a shared document merges by state vectors (edits on both sides survive)
        this.doc.collab.readOnly = this.readOnly;
        this.doc.cm.setOption("readOnly", this.readOnly);
        await this.connectShared(this.doc);
      } else if (this.doc) {
        // reconnect: the open document stays as it is in memory; push unsaved edits
        if (this.dirty) this.write();
        this.doc.ctx.readOnly = this.readOnly;
      } else {
        await this.openPath(this.path);
      }
    }

    onReconnect() {
      this.start();
    }

    // Terminals follow the role: an owner or editor gets the Terminal button and, after a reload or a
    // reconnect, the terminals the workspace still has (reattached by id); a viewer gets none.
    setupTerminals() {
      this.termBtn.hidden = this.readOnly;
      if (this.readOnly) {
        if (this.terms) this.showTerminal(false);
        if (this.terms) this.terms.dispose();
        this.terms = null;
        return;
      }
      if (!this.terms) {
        this.terms = new SW.TerminalPanel({ session: this.session, workspace: this.id, flash: this.flash, describe: this.describe });
        this.wsMain.insertBefore(this.terms.node, this.historyEl);
        if (this.terms.wasShown()) this.showTerminal(true);
      } else if (this.terms.shown) {
        this.terms.sync();
      }
    }

    showTerminal(on) {
      if (!this.terms) return;
      this.docMain.hidden = on;
      this.termBtn.setAttribute("aria-pressed", String(on));
      this.termBtn.textContent = on ? "Close terminal view" : "Terminal";
      if (on) this.terms.show();
      else this.terms.hide();
    }

    onTerminal(m) {
      if (this.terms) this.terms.onFrame(m);
    }

    // ---- shared text documents (js/collab.js): unsolicited doc_update / doc_awareness / doc_closed
    onDocFrame(m) {
      const doc = this.doc;
      if (!doc || !doc.collab || m.session !== this.id || m.path !== doc.path) return;
      if (m.type !== "doc_closed") return doc.collab.remote(m);
      if (m.reason === "delete" || m.reason === "rename") return; // the tree action says what happened
      this.connectShared(doc); // the worker's session ended: join its new copy (merged by text)
    }

    async connectShared(doc, draft) {
      try {
        await doc.collab.connect(draft);
      } catch (e) {
        if (e.code !== "offline" && e.code !== "disconnected") this.flash("Could not open " + doc.path + " for editing together: " + this.describe(e));
      }
      this.sharedState(doc);
    }

    sharedState(doc) {
      if (this.doc !== doc || !doc.collab) return;
      const was = this.dirty;
      this.dirty = doc.collab.dirty && !this.readOnly;
      if (this.dirty) this.saveDraft();
      else if (was) {
        this.saveDraft.cancel();
        localStorage.removeItem(draftKey(this.id, doc.path));
        this.updateSize(doc.path, new TextEncoder().encode(doc.getText()).length); // what the worker writes
      }
      this.showSaveState();
    }

    onConnState(s) {
      this.connEl.textContent = { connecting: "connecting…", open: "connected", reconnecting: "reconnecting…", closed: "disconnected" }[s];
      this.connEl.className = "conn " + s;
      this.showSaveState();
    }

    onPresence(m) {
      const users = (m.users || []).map((u) => (typeof u === "string" ? u : u.name));
      clear(this.presenceEl);
      if (users.length) this.presenceEl.append("Here: ", ...users.map((u) => el("span", { class: "user" }, u)));
    }

    // Another member wrote a file (unsolicited `file_changed` {workspace, path, by}): refresh the tree, and the
    // open document when it has no unsaved edits here; otherwise say so (this copy wins on the next save).
    async onFileChanged(m) {
      if (m.workspace && m.workspace !== this.id) return;
      this.refreshTree();
      if (!this.doc || this.doc.path !== m.path || this.saving || this.doc.collab) return; // shared: updates arrive as such
      if (this.dirty) {
        this.flash(m.path + " was changed by " + (m.by || "someone else") + "; saving here will overwrite it.");
        return;
      }
      try {
        const r = await this.session.read(m.path);
        if (!this.dirty && r.text !== undefined && r.text !== this.doc.getText()) this.doc.setText(r.text);
      } catch (e) {
        /* shown on the next action */
      }
    }

    leave() {
      window.removeEventListener("pagehide", this.onPageHide);
      if (this.terms) {
        this.terms.hide();
        this.terms.dispose();
        this.terms = null;
      }
      this.storeDraft();
      const bye = () => this.session.leave().catch(() => {}); // presence; nothing else depends on it
      if (this.dirty) this.write().then(bye);
      else bye();
      document.body.classList.remove("read-only");
    }

    toggleFiles(open) {
      const on = open === undefined ? !this.filesNav.classList.contains("open") : open;
      this.filesNav.classList.toggle("open", on);
      this.filesBtn.setAttribute("aria-expanded", String(on));
      if (on) {
        const first = this.filesNav.querySelector("button");
        if (first) first.focus();
      }
    }

    // the size shown in the tree for one file, after a write (no new listing needed)
    updateSize(path, size) {
      if (typeof size !== "number") return;
      const row = [...this.treeEl.querySelectorAll("li.entry")].find((li) => li.dataset.path === path);
      if (row) row.querySelector(".size").textContent = fmtSize(size);
      else if (join(this.dir, path.split("/").pop()) === path) this.refreshTree(); // a new file here
    }

    renderTreeTools() {
      clear(this.treeTools);
      if (this.readOnly) return;
      const b = (label, fn, id) => el("button", { class: "secondary small", id, onclick: fn }, label);
      this.treeTools.append(
        b("New worksheet", () => this.create("worksheet"), "new-worksheet"),
        b("New file", () => this.create("file"), "new-file"),
        b("New folder", () => this.create("folder"), "new-folder"),
        b("Upload", () => this.upload.click(), "upload"),
      );
    }

    async refreshTree() {
      let r;
      try {
        r = await this.session.ls(this.dir);
      } catch (e) {
        this.flash("Could not list files: " + this.describe(e));
        return;
      }
      clear(this.crumbEl);
      const parts = this.dir === "." ? [] : this.dir.split("/");
      this.crumbEl.append(el("button", { class: "link", onclick: () => this.cd(".") }, "/"));
      parts.forEach((p, i) => this.crumbEl.append(" ", el("button", { class: "link", onclick: () => this.cd(parts.slice(0, i + 1).join("/")) }, p), " /"));
      clear(this.treeEl);
      this.showSite();
      const entries = r.filter((e) => e.name !== ".git" && e.name !== ".keep");
      entries.sort((a, b) => (b.type === "dir") - (a.type === "dir") || a.name.localeCompare(b.name));
      if (!entries.length) this.treeEl.append(el("li", { class: "empty" }, "No files yet."));
      for (const e of entries) this.treeEl.append(this.entryRow(e));
    }

    cd(dir) {
      this.dir = dir;
      this.refreshTree();
    }

    entryRow(e) {
      const path = join(this.dir, e.name);
      const open =
        e.type === "dir"
          ? () => this.cd(path)
          : () => {
              this.toggleFiles(false);
              this.showTerminal(false);
              location.hash = "#/w/" + encodeURIComponent(this.id) + "/" + encodeURIComponent(path);
            };
      const icon = e.type === "dir" ? "▸ " : SW.editor.isWorksheet(e.name) ? "∑ " : "";
      const b = (label, fn, title) => el("button", { class: "icon", title: title + " " + e.name, "aria-label": title + " " + e.name, onclick: fn }, label);
      return el(
        "li",
        { class: "entry " + e.type + (this.doc && this.doc.path === path ? " current" : ""), dataset: { path } },
        el("button", { class: "link name", onclick: open }, icon, e.name),
        el("span", { class: "size" }, e.type === "dir" ? "" : fmtSize(e.size)),
        e.type !== "dir" ? b("⤓", () => this.download(path), "Download") : null,
        this.readOnly ? null : b("✎", () => this.rename(path, e.name), "Rename"),
        this.readOnly ? null : b("✕", () => this.remove(path, e.name), "Delete"),
      );
    }

    async create(kind) {
      const def = { worksheet: "untitled.sagews", file: "untitled.txt", folder: "folder" }[kind];
      const r = await dialog("New " + kind, [{ name: "name", label: "Name", value: def }], "Create");
      if (!r) return;
      let name = r.name.trim();
      if (!validName(name)) return this.flash("Not a valid name: " + name);
      if (kind === "worksheet" && !name.endsWith(".sagews")) name += ".sagews";
      const path = join(this.dir, name);
      if (kind === "folder") await this.guard(this.session.mkdir(path));
      else {
        const text = kind === "worksheet" ? SW.worksheet.serialize({ cells: [{ id: SW.worksheet.newId(), engine: "sage", input: "", outputs: [] }] }) : "";
        await this.guard(this.session.write(path, { text }));
      }
      await this.refreshTree();
      if (kind !== "folder") {
        this.toggleFiles(false);
        location.hash = "#/w/" + encodeURIComponent(this.id) + "/" + encodeURIComponent(path);
      }
    }

    async rename(path, name) {
      const r = await dialog("Rename " + name, [{ name: "name", label: "New name", value: name }], "Rename");
      if (!r || !validName(r.name.trim())) return;
      const dst = join(this.dir, r.name.trim());
      await this.guard(this.session.rename(path, dst));
      if (this.doc && this.doc.path === path) location.hash = "#/w/" + encodeURIComponent(this.id) + "/" + encodeURIComponent(dst);
      this.refreshTree();
    }

    async remove(path, name) {
      if (!(await confirmDialog("Delete " + name + "?"))) return;
      await this.guard(this.session.remove(path));
      if (this.doc && this.doc.path === path) {
        this.closeDoc();
        location.hash = "#/w/" + encodeURIComponent(this.id);
      }
      this.refreshTree();
    }

    async download(path) {
      const r = await this.guard(this.session.read(path));
      const blob = r.b64 !== undefined ? new Blob([bytesFromB64(r.b64)]) : new Blob([r.text], { type: "text/plain" });
      downloadBlob(blob, path.split("/").pop());
    }

    async doUpload() {
      for (const f of this.upload.files) {
        if (f.size > MAX_UPLOAD) {
          this.flash(f.name + " is too large to upload here (" + fmtSize(f.size) + "; the limit is " + fmtSize(MAX_UPLOAD) + ").");
          continue;
        }
        const bytes = new Uint8Array(await f.arrayBuffer());
        if (!validName(f.name)) {
          this.flash("Not a valid file name: " + f.name);
          continue;
        }
        await this.guard(this.session.write(join(this.dir, f.name), { b64: b64FromBytes(bytes) }), "Uploaded " + f.name + ".");
      }
      this.upload.value = "";
      this.refreshTree();
    }

    // ---- the open document
    closeDoc() {
      this.storeDraft(); // unsaved edits that could not be written are kept for the next open
      this.autosave.cancel();
      if (this.doc && this.doc.close) this.doc.close();
      this.doc = null;
      this.dirty = false;
      clear(this.docHead);
      clear(this.docBox);
    }

    async openPath(path) {
      if (this.terms && this.terms.shown && path && path !== this.path) this.showTerminal(false); // another file chosen
      if (this.doc && this.doc.path === path) return;
      if (this.dirty) await this.write();
      this.closeDoc();
      this.path = path;
      if (!path) {
        this.docBox.append(el("p", { class: "hint" }, "Open a file on the left, or create a new worksheet."));
        return;
      }
      if (!this.started) return; // start() opens it once connected
      let r;
      try {
        r = await this.session.read(path);
      } catch (e) {
        this.docBox.append(el("p", { class: "hint" }, "Cannot open " + path + ": " + this.describe(e)));
        return;
      }
      if (r.b64 !== undefined) {
        this.docHead.append(el("h2", {}, path));
        this.docBox.append(el("p", { class: "hint" }, "Binary file (" + fmtSize(r.size) + "). ", el("button", { class: "secondary", onclick: () => this.download(path) }, "Download")));
        return;
      }
      let text = r.text;
      const draft = localStorage.getItem(draftKey(this.id, path));
      const restoredDraft = draft !== null && draft !== text && !this.readOnly;
      if (restoredDraft) text = draft;
      const ctx = {
        readOnly: this.readOnly,
        onChange: () => this.changed(),
        onSave: () => this.saveVersion(),
        exec: (code, engine, onFrame) => this.session.exec(code, engine, onFrame),
        complete: (code, cursor, engine) => this.session.complete(code, cursor, engine),
      };
      let Doc = SW.editor.isWorksheet(path) && !this.asText ? SW.editor.WorksheetDoc : SW.editor.TextDoc;
      this.asText = false;
      let problem = null;
      if (Doc === SW.editor.WorksheetDoc) {
        try {
          SW.worksheet.parseAny(path, text);
        } catch (e) {
          problem = e; // e.g. a .ipynb that is not nbformat 4 JSON: open it as text, say why
          Doc = SW.editor.TextDoc;
        }
      }
      this.renderDocHead(path, Doc === SW.editor.WorksheetDoc);
      this.showPublished(path);
      if (problem) this.docBox.append(el("p", { class: "doc-problem", role: "alert" }, problem.message + " It is opened as text."));
      // worksheets and notebooks (also one opened as text) keep whole-text writes: their nbformat check
      // answers a write, and cells as shared documents are not done yet (docs/protocol-client.md)
      const shared = Doc === SW.editor.TextDoc && !SW.editor.isWorksheet(path);
      if (shared) {
        // a text file is a shared document while open: every editor's keystrokes merge (js/collab.js)
        ctx.shared = (cmInst) =>
          new SW.collab.SharedText({
            session: this.session,
            path,
            cm: cmInst,
            user: (this.user && this.user.name) || "?",
            readOnly: this.readOnly,
            onState: () => this.sharedState(this.doc),
            onError: (e) => this.flash("Could not send your edit of " + path + ": " + this.describe(e)),
          });
      }
      this.doc = new Doc(this.docBox, path, shared ? "" : text, ctx);
      this.serverText = r.text;
      this.dirty = false;
      if (shared) await this.connectShared(this.doc, restoredDraft ? text : undefined);
      if (this.doc && this.doc.path !== path) return; // another file was opened meanwhile
      if (restoredDraft) {
        this.flash("Restored your unsaved edits to " + path + " from this browser.", "info");
        if (!shared) this.changed(); // a shared document merged the draft in connectShared
      }
      this.showSaveState();
      for (const li of this.treeEl.querySelectorAll("li.entry")) li.classList.toggle("current", li.dataset.path === path);
      if (!this.readOnly) this.doc.focus();
    }

    renderDocHead(path, isWs) {
      const b = (label, fn, id, cls) => el("button", { class: cls || "secondary", id, onclick: fn }, label);
      const ro = this.readOnly;
      SW.util.append(this.docHead, [
        el("h2", { class: "doc-path" }, path),
        this.saveEl,
        ro ? null : b("Save version", () => this.saveVersion(), "save", "primary"),
        isWs && !ro ? b("▶▶ Run all", () => this.doc && this.doc.runAll(), "run-all") : null,
        isWs && !ro ? b("■ Interrupt", () => this.guard(this.session.interrupt()), "interrupt") : null,
        isWs && !ro ? b("↻ Restart", () => this.guard(this.session.restart(), "Engine restarted."), "restart") : null,
        isWs && !ro ? b("Clear outputs", () => this.doc && this.doc.clearOutputs(), "clear-outputs") : null,
        b("History", () => this.toggleHistory(), "history-btn"),
        isWs && !ro && /\.sagews$/.test(path) ? b("Export .ipynb", () => this.exportIpynb(), "export-ipynb") : null,
        el("span", { class: "pub-state" }),
      ]);
    }

    changed() {
      if (this.readOnly || !this.doc) return;
      if (this.doc.collab) return this.sharedState(this.doc);
      this.dirty = true;
      this.saveDraft();
      this.showSaveState();
      this.autosave();
    }

    // The unsaved text goes to localStorage (debounced: a worksheet with images is large), and at once
    // when the page is hidden or closed.
    storeDraft() {
      this.saveDraft.cancel();
      if (!this.dirty || !this.doc || this.readOnly) return;
      try {
        localStorage.setItem(draftKey(this.id, this.doc.path), this.doc.getText());
      } catch (e) {
        /* storage full: the in-memory copy remains */
      }
    }

    showSaveState() {
      let s;
      if (!this.doc || this.readOnly) s = this.readOnly ? "read-only" : "saved";
      else if (this.conn.state !== "open" && this.dirty) s = "offline";
      else if (this.saving) s = "saving";
      else if (this.dirty) s = "unsaved";
      else s = "saved";
      this.saveEl.dataset.state = s;
      this.saveEl.textContent = { saved: "Saved", saving: "Saving…", unsaved: "Unsaved changes", offline: "Offline — edits kept in this browser", "read-only": "Read-only" }[s];
    }

    // Write the open document to the workspace (autosave). Returns true when the server has it.
    async write() {
      if (this.doc && this.doc.collab) return this.readOnly || this.doc.collab.settle(); // the worker writes the file
      if (!this.doc || this.readOnly || !this.dirty) return true;
      if (this.saving) return this.writing;
      this.autosave.cancel();
      const doc = this.doc;
      const text = doc.getText();
      this.saving = true;
      this.showSaveState();
      this.writing = (async () => {
        try {
          const r = await this.session.write(doc.path, { text });
          this.updateSize(doc.path, r.size);
          if (r.warning) this.flash(r.warning, "warning");
          if (this.doc === doc && doc.getText() === text) {
            this.dirty = false;
            this.saveDraft.cancel();
            localStorage.removeItem(draftKey(this.id, doc.path));
          }
          return true;
        } catch (e) {
          if (e.code !== "offline" && e.code !== "disconnected") this.flash("Could not save " + doc.path + ": " + this.describe(e));
          return false;
        } finally {
          this.saving = false;
          this.showSaveState();
          if (this.dirty && this.doc === doc && this.conn.state === "open") this.autosave();
        }
      })();
      return this.writing;
    }

    // Save = write + commit a version (git) so it shows in History.
    async saveVersion(message) {
      if (this.readOnly) return;
      if (this.saving) await this.writing;
      if (!(await this.write())) return;
      try {
        const r = await this.session.save(message || "Save " + (this.doc ? this.doc.path : "workspace"));
        this.flash(r.unchanged ? "No changes since the last version." : "Saved version " + String(r.commit || "").slice(0, 8) + ".", "info");
      } catch (e) {
        if (e.code !== "nothing_to_save") return this.flash("Could not save a version: " + this.describe(e));
      }
      if (!this.historyEl.hidden) this.loadHistory();
    }

    // ---- history
    toggleHistory() {
      this.historyEl.hidden = !this.historyEl.hidden;
      if (!this.historyEl.hidden) this.loadHistory();
    }

    async loadHistory() {
      clear(this.historyEl).append(el("h2", {}, "History"), el("p", { class: "hint" }, "Loading…"));
      let r;
      try {
        r = await this.session.history(100);
      } catch (e) {
        clear(this.historyEl).append(el("h2", {}, "History"), el("p", { class: "hint" }, this.describe(e)));
        return;
      }
      const ul = el("ul", { class: "commits" });
      for (const c of r) {
        ul.append(
          el(
            "li",
            { dataset: { commit: c.commit } },
            el("button", { class: "link commit", onclick: () => this.preview(c) }, c.message || "(no message)"),
            el("div", { class: "meta" }, el("span", { class: "author" }, (c.author || "?") + (c.coauthors && c.coauthors.length ? " with " + c.coauthors.join(", ") : "")), " · ", fmtTime(c.date), " · ", String(c.commit).slice(0, 8)),
          ),
        );
      }
      this.previewEl = el("div", { class: "preview" });
      clear(this.historyEl).append(el("h2", {}, "History"), el("button", { class: "secondary small", onclick: () => (this.historyEl.hidden = true) }, "Close"), ul, this.previewEl);
      if (!r.length) ul.append(el("li", { class: "empty" }, "No saved versions yet."));
    }

    async preview(c) {
      if (!this.doc) return this.flash("Open a file to see its old versions.");
      const path = this.doc.path;
      clear(this.previewEl);
      let r;
      try {
        r = await this.session.read(path, c.commit);
      } catch (e) {
        this.previewEl.append(el("p", { class: "hint" }, path + " at " + String(c.commit).slice(0, 8) + ": " + this.describe(e)));
        return;
      }
      const body = el("div", { class: "preview-body" });
      let shown = false;
      if (SW.editor.isWorksheet(path) && r.text !== undefined) {
        try {
          SW.worksheet.renderCells(body, path, r.text);
          shown = true;
        } catch (e) {
          body.append(el("p", { class: "hint" }, e.message));
        }
      }
      if (!shown) body.append(el("pre", {}, r.text !== undefined ? r.text : "(binary)"));
      SW.util.append(this.previewEl, [
        el("h3", {}, path + " at " + String(c.commit).slice(0, 8)),
        this.readOnly || r.text === undefined ? null : el("button", { id: "restore-version", onclick: () => this.restore(path, r.text, c) }, "Restore this version"),
        body,
      ]);
    }

    async restore(path, text, c) {
      if (!this.doc || this.doc.path !== path) return;
      this.doc.setText(text);
      this.changed();
      await this.saveVersion("Restore " + path + " to " + String(c.commit).slice(0, 8));
    }

    // ---- publishing: one file (a snapshot of its text), or a folder / the whole workspace as a site
    async publishedList() {
      try {
        return await api.published(this.id);
      } catch (e) {
        return null; // not essential: the buttons say what they can
      }
    }

    // The open file's state: "Publish", or its link with "Update" (a new snapshot) and "Unpublish".
    renderPubState(path, pub) {
      const box = this.docHead.querySelector(".pub-state");
      if (!box || !this.doc || this.doc.path !== path) return;
      clear(box);
      const ro = this.readOnly;
      if (!pub) {
        if (!ro) box.append(el("button", { class: "secondary", id: "publish", onclick: () => this.publish() }, "Publish"));
        return;
      }
      box.append(
        el("span", { class: "pub-link" }, "Published: ", el("a", { href: pub.url, target: "_blank", rel: "noopener", id: "pub-url" }, pub.url)),
        ro ? null : el("button", { class: "secondary small", id: "republish", title: "Publish the current text again", onclick: () => this.publish() }, "Update"),
        ro ? null : el("button", { class: "secondary small", id: "unpublish", onclick: () => this.unpublish() }, "Unpublish"),
      );
    }

    async showPublished(path) {
      const list = await this.publishedList();
      if (list) this.renderPubState(path, list.find((x) => x.path === path));
    }

    async publish() {
      if (!this.doc) return;
      const path = this.doc.path;
      if (this.dirty) await this.saveVersion();
      const url = await this.guard(api.publish(this.id, path), "Published " + path + ".");
      this.renderPubState(path, { path, url });
    }

    async unpublish() {
      if (!this.doc) return;
      const path = this.doc.path;
      await this.guard(api.unpublish(this.id, path), "Unpublished " + path + ".");
      this.renderPubState(path, null);
    }

    // the folder shown in the tree as a site: "/" is the whole workspace, else "dir/"
    siteKey() {
      return this.dir === "." ? "/" : this.dir + "/";
    }

    async showSite() {
      const key = this.siteKey();
      const list = await this.publishedList();
      if (!list || key !== this.siteKey()) return;
      const pub = list.find((x) => x.path === key);
      const what = key === "/" ? "workspace" : "folder";
      clear(this.siteEl);
      if (pub) {
        this.siteEl.append(
          el("span", {}, "This " + what + " is published as a site: "),
          el("a", { href: pub.url, target: "_blank", rel: "noopener", id: "site-url" }, pub.url),
          this.readOnly ? null : el("button", { class: "secondary small", id: "republish-site", onclick: () => this.publishSite() }, "Update"),
          this.readOnly ? null : el("button", { class: "secondary small", id: "unpublish-site", onclick: () => this.unpublishSite() }, "Unpublish"),
        );
      } else if (!this.readOnly) {
        this.siteEl.append(el("button", { class: "secondary small", id: "publish-site", title: "Publish the files of this " + what + " (as of the last saved version) as a read-only site", onclick: () => this.publishSite() }, "Publish " + what + " as a site"));
      }
    }

    async publishSite() {
      const key = this.siteKey();
      const what = key === "/" ? "the workspace" : key;
      const again = !!this.siteEl.querySelector("#site-url");
      await this.saveVersion("Save before publishing " + what);
      await this.guard(api.publish(this.id, key, true), again ? "Updated the site of " + what + "." : "Published " + what + " as a site.");
      this.showSite();
    }

    async unpublishSite() {
      const key = this.siteKey();
      await this.guard(api.unpublish(this.id, key), "Unpublished the site.");
      this.showSite();
    }

    // ---- export a worksheet as a Jupyter notebook next to it (name.ipynb); the backend checks it with nbformat
    async exportIpynb() {
      if (!this.doc || !/\.sagews$/.test(this.doc.path)) return;
      const target = this.doc.path.replace(/\.sagews$/, ".ipynb");
      const text = SW.notebook.fromWorksheet(this.doc.getText());
      const r = await this.guard(this.session.write(target, { text }), "Exported to " + target + ".");
      if (r.warning) this.flash(r.warning, "warning");
      this.refreshTree();
    }
  }

  SW.WorkspaceView = WorkspaceView;
})();
