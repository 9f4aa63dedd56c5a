// The .sagews worksheet format (docs/worksheet-format.md) and safe rendering of cell outputs.
"use strict";
(function () {
  const SW = (window.SW = window.SW || {});
  const { el, clear } = SW.util;
  const HEADER = "#sagews worksheet v1";
  const MARK = /^#%% (cell|output)\b(.*)$/;
  const MAX_CHARS = 200000; // per cell, what the browser keeps and shows; more is cut with a notice

  function newId() {
    return Math.random().toString(36).slice(2, 10);
  }

  function parseAttrs(s) {
    const out = {};
    for (const m of s.matchAll(/([a-z]+)=(\S+)/g)) out[m[1]] = m[2];
    return out;
  }

  const ENGINES = ["sage", "python"];
  const TEXT_TYPES = ["markdown", "html"];

  // text -> {engine, cells: [{id, engine, input, outputs: [frame...]} or {id, type: markdown|html, input}]}
  // `engine` is the worksheet's default engine (header attribute; sage when absent): new cells get it.
  function parse(text) {
    const lines = text.replace(/\r\n/g, "\n").split("\n");
    const cells = [];
    let cur = null;
    let mode = null;
    let i = 0;
    let engine = "sage";
    if (lines[0] && lines[0].startsWith("#sagews")) {
      const a = parseAttrs(lines[0].replace(/^#sagews worksheet v\d+/, ""));
      if (ENGINES.includes(a.engine)) engine = a.engine;
      i = 1;
    }
    const inputLines = [];
    const flush = () => {
      if (cur && mode === "input") cur.input = inputLines.join("\n").replace(/\n+$/, "");
      inputLines.length = 0;
    };
    for (; i < lines.length; i++) {
      const line = lines[i];
      const m = line.match(MARK);
      if (m && m[1] === "cell") {
        flush();
        const a = parseAttrs(m[2]);
        cur = TEXT_TYPES.includes(a.type) ? { id: a.id || newId(), type: a.type, input: "", outputs: [] } : { id: a.id || newId(), engine: ENGINES.includes(a.engine) ? a.engine : engine, input: "", outputs: [] };
        cells.push(cur);
        mode = "input";
      } else if (m && m[1] === "output" && cur) {
        cur.input = inputLines.join("\n");
        inputLines.length = 0;
        mode = "output";
      } else if (mode === "output") {
        if (line.trim() === "") continue;
        try {
          cur.outputs.push(JSON.parse(line));
        } catch (e) {
          cur.outputs.push({ type: "stream", name: "stderr", text: "[unreadable output line: " + line.slice(0, 200) + "]\n" });
        }
      } else {
        if (!cur) {
          if (line === "") continue;
          cur = { id: newId(), engine, input: "", outputs: [] };
          cells.push(cur);
          mode = "input";
        }
        inputLines.push(line.replace(/^\\(\\*#%%)/, "$1"));
      }
    }
    if (cur && mode === "input") cur.input = inputLines.join("\n").replace(/\n+$/, "");
    if (!cells.length) cells.push({ id: newId(), engine, input: "", outputs: [] });
    return { engine, cells };
  }

  function serialize(ws) {
    const out = [ws.engine && ws.engine !== "sage" ? HEADER + " engine=" + ws.engine : HEADER];
    for (const c of ws.cells) {
      const text = TEXT_TYPES.includes(c.type);
      out.push("#%% cell id=" + c.id + (text ? " type=" + c.type : " engine=" + (c.engine || ws.engine || "sage")));
      const input = c.input.replace(/\n+$/, "");
      if (input !== "") for (const l of input.split("\n")) out.push(/^\\*#%%/.test(l) ? "\\" + l : l);
      if (!text && c.outputs && c.outputs.length) {
        out.push("#%% output id=" + c.id);
        for (const o of c.outputs) out.push(JSON.stringify(o));
      }
    }
    return out.join("\n") + "\n";
  }

  // ---- output rendering. Every frame type the worker/backend sends for an exec, in the order received.
  function pickMime(data) {
    for (const m of ["image/png", "text/latex", "text/html", "text/plain"]) if (data && data[m] !== undefined) return m;
    return null;
  }

  function renderLatex(src) {
    const node = el("div", { class: "out-latex" });
    let tex = String(src).trim();
    const dm = tex.match(/^\$\$([\s\S]*)\$\$$/) || tex.match(/^\\\[([\s\S]*)\\\]$/) || tex.match(/^\$([\s\S]*)\$$/);
    if (dm) tex = dm[1];
    try {
      window.katex.render(tex, node, { displayMode: true, throwOnError: false, trust: false, maxExpand: 1000 });
    } catch (e) {
      node.textContent = src;
    }
    return node;
  }

  // Untrusted HTML goes into a sandboxed iframe without allow-scripts and without allow-same-origin:
  // no script runs, and the content cannot reach the app's DOM, cookies or storage.
  function renderHtml(src) {
    const f = el("iframe", { class: "out-html", sandbox: "", title: "HTML output", referrerpolicy: "no-referrer" });
    f.srcdoc = String(src);
    return f;
  }

  function renderMime(data, cls) {
    const m = pickMime(data);
    if (m === "image/png") {
      return el("img", { class: "out-img", alt: (data["text/plain"] || "image").slice(0, 200), src: "data:image/png;base64," + String(data[m]).replace(/[^A-Za-z0-9+/=]/g, "") });
    }
    if (m === "text/latex") return renderLatex(data[m]);
    if (m === "text/html") return renderHtml(data[m]);
    if (m === "text/plain") return el("pre", { class: cls || "out-result" }, data[m]);
    return el("pre", { class: "out-stderr" }, "[output of an unsupported type: " + Object.keys(data || {}).join(", ") + "]");
  }

  // Renders outputs into `box` incrementally: call .add(frame) per frame; keeps counts for truncation.
  class OutputView {
    constructor(box) {
      this.box = box;
      this.chars = 0;
      this.truncated = 0;
      this.lastPre = null;
      this.notice = null;
    }

    reset() {
      clear(this.box);
      this.chars = 0;
      this.truncated = 0;
      this.lastPre = null;
      this.notice = null;
    }

    _truncate(n) {
      this.truncated += n;
      if (!this.notice) {
        this.notice = el("div", { class: "out-notice out-truncated", role: "status" });
        this.box.appendChild(this.notice);
      }
      this.notice.textContent = "Output truncated: " + this.truncated.toLocaleString() + " more characters not shown.";
    }

    add(f) {
      const size = JSON.stringify(f).length;
      if (this.chars + size > MAX_CHARS && f.type !== "done" && f.type !== "exception") {
        this._truncate(f.text ? f.text.length : size);
        return false;
      }
      this.chars += size;
      if (f.type === "stream") {
        const cls = f.name === "stderr" ? "out-stderr" : "out-stdout";
        if (this.lastPre && this.lastPre.className === cls && this.lastPre === this.box.lastChild) {
          this.lastPre.appendChild(document.createTextNode(f.text));
        } else {
          this.lastPre = el("pre", { class: cls }, f.text);
          this.box.appendChild(this.lastPre);
        }
        if (/\[sagews: [^\]]*(limit|truncat)/i.test(f.text)) this.box.classList.add("has-limit");
        return true;
      }
      this.lastPre = null;
      if (f.type === "display" || f.type === "result") {
        this.box.appendChild(renderMime(f.data, f.type === "result" ? "out-result" : "out-stdout"));
      } else if (f.type === "exception") {
        const tb = Array.isArray(f.traceback) ? f.traceback.join("") : f.traceback || "";
        // the traceback ends with the exception's line (worker and Jupyter alike): shown once, as sent
        const shown = tb.trim() ? tb.replace(/\n+$/, "") : (f.ename || "Error") + (f.evalue ? ": " + f.evalue : "");
        this.box.appendChild(el("pre", { class: "out-error" }, shown));
      } else if (f.type === "done") {
        const msgs = {
          interrupted: "Interrupted.",
          died: "The engine stopped: " + (f.message || "") + " — press Restart.",
          limit: "Output truncated: " + (f.message || "limit reached") + ".",
          lost: "Connection lost while this cell ran; its output may be incomplete.",
        };
        if (msgs[f.status]) this.box.appendChild(el("div", { class: "out-notice out-" + f.status, role: "status" }, msgs[f.status]));
      } else if (f.type === "error") {
        this.box.appendChild(el("div", { class: "out-notice out-server-error", role: "alert" }, "Server error: " + (f.message || f.code)));
      }
      return true;
    }
  }

  // A document's cells, read-only (history previews, published pages): code and its outputs, text cells
  // rendered. path decides the format (.ipynb or .sagews); opts.resolve(src) may map relative image/link
  // targets (published sites).
  function parseAny(path, text) {
    return /\.ipynb$/i.test(path) ? SW.notebook.parse(text) : parse(text);
  }

  function renderCells(box, path, text, opts) {
    const model = parseAny(path, text);
    for (const c of model.cells) {
      if (!c.input.trim() && !(c.outputs || []).length) continue;
      if (c.type === "raw") box.append(el("section", { class: "cell pub-cell text-cell" }, el("pre", { class: "raw-cell" }, c.input)));
      else if (c.type) box.append(el("section", { class: "cell pub-cell text-cell" }, SW.markdown.render(c.input, c.type, c.nb && c.nb.attachments, opts)));
      else {
        const out = el("div", { class: "cell-output" });
        const v = new OutputView(out);
        (c.outputs || []).forEach((f) => v.add(f));
        box.append(el("section", { class: "cell pub-cell" }, el("pre", { class: "cell-src" }, c.input), out));
      }
    }
    return model;
  }

  SW.worksheet = { parse, parseAny, renderCells, serialize, newId, OutputView, renderMime, MAX_CHARS, ENGINES, TEXT_TYPES };
})();
