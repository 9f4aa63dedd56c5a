// Open documents: a plain text file (one CodeMirror) or a worksheet (cells). Both report changes, keep a
// draft in localStorage until the server has it, and expose getText()/setText().
"use strict";
(function () {
  const SW = (window.SW = window.SW || {});
  const { el, clear } = SW.util;
  const WS = SW.worksheet;

  function modeFor(path) {
    if (/\.(py|sage|sagews|pyx)$/.test(path)) return "python";
    return null;
  }

  function cm(parent, value, opts) {
    return window.CodeMirror(parent, Object.assign({ value, lineNumbers: true, indentUnit: 4, matchBrackets: true, viewportMargin: Infinity }, opts));
  }

  class TextDoc {
    constructor(box, path, text, ctx) {
      this.path = path;
      this.ctx = ctx;
      this.cm = cm(box, text, {
        mode: modeFor(path),
        readOnly: ctx.readOnly,
        extraKeys: {
          "Ctrl-S": () => ctx.onSave(),
          "Cmd-S": () => ctx.onSave(),
          Esc: (c) => c.getInputField().blur(),
        },
      });
      this.cm.getWrapperElement().classList.add("text-editor");
      this.cm.getInputField().setAttribute("aria-label", "Contents of " + path);
      // a shared document (js/collab.js): the Yjs binding owns the text; its state is the save state
      this.collab = ctx.shared ? ctx.shared(this.cm) : null;
      this.cm.on("change", (_c, ch) => {
        if (ch.origin !== "setValue" && !this.collab) ctx.onChange();
      });
      setTimeout(() => this.cm.refresh(), 0);
    }
    getText() {
      return this.cm.getValue();
    }
    setText(t) {
      if (this.collab) this.collab.setText(t);
      else this.cm.setValue(t);
    }
    close() {
      if (this.collab) this.collab.close();
    }
    focus() {
      this.cm.focus();
    }
  }

  // How a document's text becomes cells and back, and which cell kinds it offers.
  //   sagews: per-cell engine (Sage/Python) or a text cell (Markdown/HTML), docs/worksheet-format.md
  //   ipynb: one kernel for the notebook, cells are Code/Markdown/Raw (js/notebook.js)
  const FORMATS = {
    sagews: {
      parse: (t) => WS.parse(t),
      serialize: (m) => WS.serialize(m),
      kinds: [
        ["sage", "Sage"],
        ["python", "Python"],
        ["markdown", "Markdown"],
        ["html", "HTML"],
      ],
      engineLabel: "New cells",
    },
    ipynb: {
      parse: (t) => SW.notebook.parse(t),
      serialize: (m) => SW.notebook.serialize(m),
      kinds: [
        ["code", "Code"],
        ["markdown", "Markdown"],
        ["raw", "Raw"],
      ],
      engineLabel: "Kernel",
    },
  };
  const TEXT_KINDS = ["markdown", "html", "raw"];
  const MODE = { markdown: "markdown", html: "htmlmixed", raw: null };
  const MAGIC = /^%(md|markdown|html)[ \t]*(?:\n|$)/; // a Sage-style first line turns a code cell into text

  class Cell {
    constructor(doc, data) {
      this.doc = doc;
      this.data = data;
      const ro = doc.ctx.readOnly;
      this.status = el("span", { class: "cell-status", role: "status", "aria-live": "polite" });
      this.runBtn = el("button", { class: "run", title: "Run (Shift-Enter)", disabled: ro, onclick: () => (this.isText && !this.editing ? this.edit() : this.run(false)) }, "▶ Run");
      this.outBox = el("div", { class: "cell-output", "aria-label": "Output", "aria-live": "polite" });
      this.kindSel = el(
        "select",
        { class: "engine", "aria-label": "Cell type", title: "Cell type: engine, or a text cell", disabled: ro, onchange: () => this.setKind(this.kindSel.value) },
        doc.format.kinds.map(([v, label]) => el("option", { value: v }, label)),
      );
      this.inBox = el("div", { class: "cell-input" });
      this.rendered = el("div", {
        class: "cell-rendered",
        tabindex: "0",
        title: ro ? null : "Double-click or press Enter to edit",
        ondblclick: () => this.edit(),
        onkeydown: (e) => {
          if (e.key === "Enter" && !e.shiftKey && e.target === this.rendered) {
            e.preventDefault();
            this.edit();
          }
        },
      });
      const tools = el(
        "div",
        { class: "cell-tools" },
        this.runBtn,
        el("button", { class: "secondary add-below", title: "Insert a cell below (Alt-Enter runs and inserts)", disabled: ro, onclick: () => doc.insertAfter(this, true) }, "+ Cell"),
        el("button", { class: "secondary del-cell", title: "Delete this cell", "aria-label": "Delete this cell", disabled: ro, onclick: () => doc.removeCell(this) }, "✕"),
        this.kindSel,
        this.status,
      );
      this.node = el("section", { class: "cell", tabindex: "-1", dataset: { cellId: data.id } }, this.inBox, this.rendered, tools, this.outBox);
      this.cm = cm(this.inBox, data.input, {
        mode: "python",
        readOnly: ro,
        lineNumbers: false,
        lineWrapping: true,
        extraKeys: {
          "Shift-Enter": () => this.run(true),
          "Ctrl-Enter": () => this.run(false),
          "Alt-Enter": () => this.run("insert"),
          "Ctrl-S": () => doc.ctx.onSave(),
          "Cmd-S": () => doc.ctx.onSave(),
          Esc: (c) => {
            c.getInputField().blur();
            (this.runBtn.disabled ? this.node : this.runBtn).focus();
          },
          "Alt-Up": () => doc.move(this, -1),
          "Alt-Down": () => doc.move(this, 1),
          Tab: (c) => this.complete(c),
        },
      });
      this.cm.getInputField().setAttribute("aria-label", "Cell input");
      this.cm.on("change", (_c, ch) => {
        if (ch.origin === "setValue") return;
        this.data.input = this.cm.getValue();
        doc.ctx.onChange();
      });
      this.view = new WS.OutputView(this.outBox);
      for (const f of data.outputs) this.view.add(f);
      this.showKind();
      this.editing = !this.isText || !data.input.trim();
      this.showEditing();
    }

    // Tab after a name (or `obj.`) completes it from the cell engine's namespace (the worker's `complete`):
    // one match is inserted, several are listed (CodeMirror's show-hint); anywhere else Tab indents.
    complete(c) {
      const doc = this.doc;
      const cur = c.getCursor();
      const before = c.getLine(cur.line).slice(0, cur.ch);
      if (doc.ctx.readOnly || !doc.ctx.complete || this.isText || c.somethingSelected() || !/[\w.]$/.test(before)) return window.CodeMirror.Pass;
      const code = c.getValue();
      const at = c.indexFromPos(cur);
      const cp = (s) => Array.from(s).length; // the worker counts code points, CodeMirror UTF-16 units
      const unit = (n) => Array.from(code).slice(0, n).join("").length;
      const engine = doc.formatName === "ipynb" ? doc.model.engine : this.data.engine;
      doc.ctx.complete(code, cp(code.slice(0, at)), engine).then(
        (r) => {
          if (c.getValue() !== code || !r.matches || !r.matches.length) return; // typed on meanwhile, or none
          const from = c.posFromIndex(unit(r.start));
          const to = c.posFromIndex(unit(r.end));
          if (r.matches.length === 1) c.replaceRange(r.matches[0], from, to, "+complete");
          else c.showHint({ hint: () => ({ list: r.matches, from, to }), completeSingle: false });
        },
        () => {}, // busy (a cell runs) or offline: nothing to complete now
      );
    }

    get isText() {
      return TEXT_KINDS.includes(this.data.type);
    }

    get kind() {
      if (this.isText) return this.data.type;
      return this.doc.formatName === "ipynb" ? "code" : this.data.engine === "python" ? "python" : "sage";
    }

    showKind() {
      this.kindSel.value = this.kind;
      this.node.classList.toggle("text-cell", this.isText);
      this.cm.setOption("mode", this.isText ? MODE[this.data.type] : "python");
    }

    // the cell-type switch: an engine (code cell) or a text type
    setKind(kind) {
      const d = this.data;
      if (TEXT_KINDS.includes(kind)) {
        d.type = kind;
        d.outputs = [];
        this.view.reset();
        this.setRunning(false, "");
      } else {
        delete d.type;
        d.engine = kind === "code" ? this.doc.model.engine : kind;
        this.editing = true;
      }
      this.showKind();
      this.showEditing();
      this.doc.ctx.onChange();
    }

    showEditing() {
      const text = this.isText;
      const edit = !text || this.editing;
      this.inBox.hidden = !edit;
      this.rendered.hidden = edit;
      this.outBox.hidden = text;
      this.runBtn.textContent = !text ? "▶ Run" : edit ? "▶ Show" : "✎ Edit";
      this.runBtn.title = !text ? "Run (Shift-Enter)" : edit ? "Show the rendered text (Shift-Enter)" : "Edit (Enter or double-click)";
      if (!edit) this.renderText();
      else this.cm.refresh();
    }

    renderText() {
      clear(this.rendered);
      const d = this.data;
      if (!d.input.trim()) {
        this.rendered.append(el("p", { class: "hint" }, "Empty " + d.type + " cell: double-click to edit."));
        return;
      }
      if (d.type === "raw") this.rendered.append(el("pre", { class: "raw-cell" }, d.input));
      else this.rendered.append(SW.markdown.render(d.input, d.type, d.nb && d.nb.attachments));
    }

    edit() {
      if (this.doc.ctx.readOnly || !this.isText) return;
      this.editing = true;
      this.showEditing();
      this.cm.focus();
    }

    setRunning(on, label) {
      this.node.classList.toggle("running", on);
      this.status.textContent = label || (on ? "running…" : "");
      this.runBtn.disabled = on || this.doc.ctx.readOnly;
    }

    async run(advance) {
      const doc = this.doc;
      if (doc.ctx.readOnly) return;
      const code = this.cm.getValue();
      this.data.input = code;
      const magic = !this.isText && doc.formatName === "sagews" && code.match(MAGIC);
      if (magic) {
        this.data.input = code.slice(magic[0].length);
        this.cm.setValue(this.data.input);
        this.setKind(magic[1] === "html" ? "html" : "markdown");
      }
      if (advance === true) doc.focusNext(this);
      else if (advance === "insert") doc.insertAfter(this, true);
      if (this.isText) {
        this.editing = false;
        this.showEditing();
        doc.ctx.onChange();
        return true;
      }
      this.data.outputs = [];
      this.view.reset();
      this.setRunning(true, "queued…");
      if (doc.formatName === "ipynb") this.data.nb = Object.assign(this.data.nb || {}, { execution_count: ++doc.execCount });
      doc.ctx.onChange();
      let cut = false;
      const collect = (f) => {
        this.setRunning(true, "running…");
        const { re, id, session, ...frame } = f; // eslint-disable-line no-unused-vars
        if (this.view.add(frame)) this.data.outputs.push(frame);
        else if (!cut) {
          cut = true;
          this.data.outputs.push({ type: "stream", name: "stderr", text: "[output truncated in the browser]\n" });
        }
      };
      let final;
      try {
        final = await doc.ctx.exec(code, doc.formatName === "ipynb" ? doc.model.engine : this.data.engine, collect);
      } catch (e) {
        final = e.code === "disconnected" ? { type: "done", status: "lost" } : { type: "error", code: e.code, message: e.message };
      }
      const { re, id, session, ...f } = final; // eslint-disable-line no-unused-vars
      this.view.add(f);
      if (f.type === "done" && f.status !== "ok" && f.status !== "error" && f.status !== "lost") this.data.outputs.push({ type: "done", status: f.status, message: f.message });
      const secs = f.elapsed !== undefined ? " (" + Number(f.elapsed).toFixed(2) + " s)" : "";
      this.setRunning(false, (f.status || f.type) + secs);
      this.node.classList.toggle("failed", f.status === "error" || f.type === "error");
      doc.ctx.onChange();
      return f.type === "done" && f.status === "ok";
    }
  }

  // A worksheet (.sagews) or a notebook (.ipynb): a list of cells over one document model.
  class WorksheetDoc {
    constructor(box, path, text, ctx) {
      this.path = path;
      this.ctx = ctx;
      this.formatName = SW.notebook.isNotebook(path) ? "ipynb" : "sagews";
      this.format = FORMATS[this.formatName];
      this.model = this.format.parse(text); // throws NotebookError for a broken .ipynb: nothing is built
      this.engineSel = el(
        "select",
        {
          id: "default-engine",
          "aria-label": this.format.engineLabel,
          disabled: ctx.readOnly,
          onchange: () => this.setEngine(this.engineSel.value),
        },
        el("option", { value: "sage" }, "Sage"),
        el("option", { value: "python" }, "Python"),
      );
      this.bar = el("div", { class: "ws-doc-bar" }, el("label", {}, this.format.engineLabel + ": ", this.engineSel));
      this.box = el("div", { class: "worksheet" });
      box.append(this.bar, this.box);
      this.cells = [];
      this.build();
    }

    build() {
      clear(this.box);
      this.engineSel.value = this.model.engine;
      this.execCount = Math.max(0, ...this.model.cells.map((c) => (c.nb && Number.isInteger(c.nb.execution_count) ? c.nb.execution_count : 0)));
      this.cells = this.model.cells.map((d) => new Cell(this, d));
      for (const c of this.cells) this.box.appendChild(c.node);
      // CodeMirror measures itself when created; these were created before being attached
      for (const c of this.cells) c.cm.refresh();
    }

    setText(text) {
      this.model = this.format.parse(text);
      this.build();
    }

    // the worksheet's default engine (new cells get it); a notebook's kernel (every code cell uses it)
    setEngine(engine) {
      this.model.engine = engine;
      if (this.formatName === "ipynb") for (const c of this.cells) if (!c.isText) c.data.engine = engine;
      this.ctx.onChange();
    }

    getText() {
      this.model.cells = this.cells.map((c) => c.data);
      return this.format.serialize(this.model);
    }

    focus() {
      const c = this.cells.find((x) => !x.isText || x.editing) || this.cells[0];
      if (c) (c.editing || !c.isText ? c.cm : c.rendered).focus();
    }

    // Runs every cell in order (text cells are rendered), stopping at the first that does not end "ok".
    async runAll() {
      for (const c of this.cells.slice()) {
        if (!c.cm.getValue().trim()) continue;
        if (!(await c.run(false))) break;
      }
    }

    clearOutputs() {
      for (const c of this.cells) {
        c.data.outputs = [];
        c.view.reset();
        c.setRunning(false, "");
      }
      this.ctx.onChange();
    }

    insertAfter(cell, focus) {
      const c = new Cell(this, { id: WS.newId(), engine: this.model.engine, input: "", outputs: [] });
      const i = cell ? this.cells.indexOf(cell) + 1 : this.cells.length;
      this.cells.splice(i, 0, c);
      this.box.insertBefore(c.node, this.cells[i + 1] ? this.cells[i + 1].node : null);
      c.cm.refresh();
      if (focus) c.cm.focus();
      this.ctx.onChange();
      return c;
    }

    focusNext(cell) {
      const i = this.cells.indexOf(cell);
      const next = this.cells[i + 1];
      if (!next) this.insertAfter(cell, true);
      else if (next.isText && !next.editing) next.rendered.focus();
      else next.cm.focus();
    }

    removeCell(cell) {
      const i = this.cells.indexOf(cell);
      this.cells.splice(i, 1);
      cell.node.remove();
      if (!this.cells.length) this.insertAfter(null, true);
      else this.cells[Math.min(i, this.cells.length - 1)].node.focus();
      this.ctx.onChange();
    }

    move(cell, d) {
      const i = this.cells.indexOf(cell);
      const j = i + d;
      if (j < 0 || j >= this.cells.length) return;
      this.cells.splice(i, 1);
      this.cells.splice(j, 0, cell);
      this.box.insertBefore(cell.node, this.cells[j + 1] ? this.cells[j + 1].node : null);
      cell.cm.focus();
      this.ctx.onChange();
    }
  }

  SW.editor = { TextDoc, WorksheetDoc, Cell, isWorksheet: (p) => /\.(sagews|ipynb)$/i.test(p) };
})();
