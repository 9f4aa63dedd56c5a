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
      this.cm.on("change", (_c, ch) => {
        if (ch.origin !== "setValue") ctx.onChange();
      });
      setTimeout(() => this.cm.refresh(), 0);
    }
    getText() {
      return this.cm.getValue();
    }
    setText(t) {
      this.cm.setValue(t);
    }
    focus() {
      this.cm.focus();
    }
  }

  class Cell {
    constructor(doc, data) {
      this.doc = doc;
      this.data = data;
      const ro = doc.ctx.readOnly;
      this.status = el("span", { class: "cell-status", role: "status", "aria-live": "polite" });
      this.runBtn = el("button", { class: "run", title: "Run (Shift-Enter)", disabled: ro, onclick: () => this.run(false) }, "▶ Run");
      this.outBox = el("div", { class: "cell-output", "aria-label": "Output", "aria-live": "polite" });
      this.engineSel = el(
        "select",
        {
          class: "engine",
          "aria-label": "Engine",
          disabled: ro,
          onchange: () => {
            this.data.engine = this.engineSel.value;
            doc.ctx.onChange();
          },
        },
        el("option", { value: "sage" }, "Sage"),
        el("option", { value: "python" }, "Python"),
      );
      this.engineSel.value = data.engine === "python" ? "python" : "sage";
      this.inBox = el("div", { class: "cell-input" });
      const tools = el(
        "div",
        { class: "cell-tools" },
        this.runBtn,
        el("button", { class: "secondary add-below", title: "Insert a cell below (Alt-Enter runs and inserts)", disabled: ro, onclick: () => doc.insertAfter(this, true) }, "+ Cell"),
        el("button", { class: "secondary del-cell", title: "Delete this cell", disabled: ro, onclick: () => doc.removeCell(this) }, "✕"),
        this.engineSel,
        this.status,
      );
      this.node = el("section", { class: "cell", tabindex: "-1", dataset: { cellId: data.id } }, this.inBox, tools, this.outBox);
      this.cm = cm(this.inBox, data.input, {
        mode: "python",
        readOnly: ro,
        lineNumbers: false,
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
    }

    setRunning(on, label) {
      this.node.classList.toggle("running", on);
      this.status.textContent = label || (on ? "running…" : "");
      this.runBtn.disabled = on || this.doc.ctx.readOnly;
    }

    async run(advance) {
      const doc = this.doc;
      if (doc.ctx.readOnly) return;
      if (advance === true) doc.focusNext(this);
      else if (advance === "insert") doc.insertAfter(this, true);
      const code = this.cm.getValue();
      this.data.input = code;
      this.data.outputs = [];
      this.view.reset();
      this.setRunning(true, "queued…");
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
        final = await doc.ctx.exec(code, this.data.engine, collect);
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

  class WorksheetDoc {
    constructor(box, path, text, ctx) {
      this.path = path;
      this.ctx = ctx;
      this.box = el("div", { class: "worksheet" });
      box.appendChild(this.box);
      this.cells = [];
      this.setText(text);
    }

    setText(text) {
      clear(this.box);
      this.cells = WS.parse(text).cells.map((d) => new Cell(this, d));
      for (const c of this.cells) this.box.appendChild(c.node);
      // CodeMirror measures itself when created; these were created before being attached
      for (const c of this.cells) c.cm.refresh();
    }

    getText() {
      return WS.serialize({ cells: this.cells.map((c) => c.data) });
    }

    focus() {
      if (this.cells[0]) this.cells[0].cm.focus();
    }

    // Runs every cell in order, stopping at the first that does not end "ok".
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
      const c = new Cell(this, { id: WS.newId(), engine: cell ? cell.data.engine : "sage", input: "", outputs: [] });
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
      if (i + 1 < this.cells.length) this.cells[i + 1].cm.focus();
      else this.insertAfter(cell, true);
    }

    removeCell(cell) {
      const i = this.cells.indexOf(cell);
      this.cells.splice(i, 1);
      cell.node.remove();
      if (!this.cells.length) this.insertAfter(null, true);
      else this.cells[Math.min(i, this.cells.length - 1)].cm.focus();
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

  SW.editor = { TextDoc, WorksheetDoc, Cell, isWorksheet: (p) => /\.sagews$/.test(p) };
})();
