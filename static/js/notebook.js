// Jupyter notebooks (.ipynb, nbformat 4) <-> the worksheet model that the cell editor works on.
//   model = {engine, cells: [{id, type?, engine, input, outputs: [exec frames]}], nb: {...what else to keep}}
// Outputs map one to one onto the worker's exec frames (docs/worksheet-format.md):
//   stream <-> stream, display_data <-> display, execute_result <-> result, error <-> exception.
// Everything the model does not use (notebook and cell metadata, attachments, execution counts, unknown
// MIME types) is kept and written back, so a notebook opened and saved here loses nothing. Written like
// nbformat's own writer (sorted keys, one-space indent, text split into lines) so diffs against files
// saved by Jupyter stay small. The backend checks every saved .ipynb with nbformat (sagews/notebook.py).
"use strict";
(function () {
  const SW = (window.SW = window.SW || {});
  const KERNELS = {
    sage: { kernelspec: { display_name: "SageMath", language: "sage", name: "sagemath" }, language_info: { name: "sage" } },
    python: { kernelspec: { display_name: "Python 3", language: "python", name: "python3" }, language_info: { name: "python" } },
  };
  const SPLIT_MIMES = ["application/javascript", "image/svg+xml"];

  class NotebookError extends Error {}

  const joinText = (v) => (Array.isArray(v) ? v.join("") : v === undefined || v === null ? "" : String(v));

  function engineOf(meta) {
    const ks = (meta && meta.kernelspec) || {};
    const li = (meta && meta.language_info) || {};
    const s = [ks.name, ks.language, li.name].filter(Boolean).join(" ").toLowerCase();
    return /sage/.test(s) ? "sage" : "python";
  }

  function bundleIn(data) {
    const out = {};
    for (const [k, v] of Object.entries(data || {})) out[k] = /json$/.test(k) || (typeof v !== "string" && !Array.isArray(v)) ? v : joinText(v); // JSON stays JSON
    return out;
  }

  function outputIn(o) {
    switch (o.output_type) {
      case "stream":
        // nb marks an output read from the file: written back as it was (not merged with its neighbours)
        return { type: "stream", name: o.name === "stderr" ? "stderr" : "stdout", text: joinText(o.text), nb: {} };
      case "display_data":
        return { type: "display", data: bundleIn(o.data), ...(o.metadata && Object.keys(o.metadata).length ? { nb: { metadata: o.metadata } } : {}) };
      case "execute_result":
        return { type: "result", data: bundleIn(o.data), nb: { metadata: o.metadata || {}, execution_count: o.execution_count === undefined ? null : o.execution_count } };
      case "error":
        // Jupyter tracebacks are lists of lines (often with ANSI colours); ours is one string
        // (shown without the colours; written back as it was)
        return { type: "exception", ename: String(o.ename || ""), evalue: String(o.evalue || ""), traceback: (o.traceback || []).map((l) => String(l).replace(/\x1b\[[0-9;]*m/g, "")).join("\n"), nb: { traceback: o.traceback || [] } };
      default:
        return { type: "stream", name: "stderr", text: "[notebook output of unknown type " + String(o.output_type) + "]\n", nb: { raw: o } };
    }
  }

  let idCounter = 0;
  const cellId = () => Date.now().toString(36).slice(-5) + (idCounter++).toString(36) + Math.random().toString(36).slice(2, 8);

  // text -> model. Throws NotebookError with a message for the user.
  function parse(text) {
    let nb;
    try {
      nb = JSON.parse(text);
    } catch (e) {
      throw new NotebookError("This .ipynb file is not valid JSON: " + e.message);
    }
    if (!nb || typeof nb !== "object" || !Array.isArray(nb.cells)) throw new NotebookError("This file is not a Jupyter notebook (no cells list).");
    if (nb.nbformat !== 4) throw new NotebookError("Only nbformat 4 notebooks can be opened here (this one is version " + nb.nbformat + "); convert it with `jupyter nbconvert --to notebook`.");
    const engine = engineOf(nb.metadata);
    const seen = new Set();
    const cells = nb.cells.map((c) => {
      let id = typeof c.id === "string" && /^[A-Za-z0-9_-]{1,64}$/.test(c.id) && !seen.has(c.id) ? c.id : cellId();
      seen.add(id);
      const keep = {};
      for (const [k, v] of Object.entries(c)) if (!["id", "cell_type", "source", "outputs", "execution_count"].includes(k)) keep[k] = v;
      const base = { id, input: joinText(c.source), outputs: [], nb: keep };
      if (c.cell_type === "markdown") return { ...base, type: "markdown" };
      if (c.cell_type === "raw") return { ...base, type: "raw" };
      base.nb.execution_count = c.execution_count === undefined ? null : c.execution_count;
      return { ...base, engine, outputs: (c.outputs || []).map(outputIn) };
    });
    const keep = {};
    for (const [k, v] of Object.entries(nb)) if (k !== "cells") keep[k] = v;
    if (!cells.length) cells.push({ id: cellId(), engine, input: "", outputs: [], nb: {} }); // somewhere to type
    return { engine, cells, nb: keep, format: "ipynb" };
  }

  const lines = (s) => {
    const out = String(s).split(/(?<=\n)/);
    return out.length === 1 && out[0] === "" ? [] : out;
  };

  function bundleOut(data) {
    const out = {};
    for (const [k, v] of Object.entries(data || {})) out[k] = typeof v === "string" && (k.startsWith("text/") || SPLIT_MIMES.includes(k)) ? lines(v) : v;
    return out;
  }

  // frames of one cell -> nbformat outputs (the worker's `done` notices have no nbformat equivalent:
  // an interrupted or cut run becomes a stderr line, so the notebook still says its output is incomplete)
  function outputsOut(frames, count) {
    const out = [];
    const live = new WeakSet(); // stream outputs made here from the engine's chunks (merged like Jupyter)
    for (const f of frames || []) {
      const meta = (f.nb && f.nb.metadata) || {};
      if (f.nb && f.nb.raw) out.push(f.nb.raw);
      else if (f.type === "stream") {
        const prev = out[out.length - 1];
        if (!f.nb && prev && live.has(prev) && prev.name === f.name) prev.text = lines(prev.text.join("") + f.text);
        else {
          const o = { output_type: "stream", name: f.name, text: lines(f.text) };
          if (!f.nb) live.add(o);
          out.push(o);
        }
      } else if (f.type === "display") out.push({ output_type: "display_data", data: bundleOut(f.data), metadata: meta });
      else if (f.type === "result") out.push({ output_type: "execute_result", data: bundleOut(f.data), metadata: meta, execution_count: count });
      else if (f.type === "exception") {
        const tb = Array.isArray(f.traceback) ? f.traceback.join("") : String(f.traceback || "");
        out.push({ output_type: "error", ename: f.ename || "Error", evalue: f.evalue || "", traceback: f.nb && f.nb.traceback ? f.nb.traceback : tb.replace(/\n+$/, "").split("\n") });
      } else if (f.type === "done" && f.status && f.status !== "ok") {
        out.push({ output_type: "stream", name: "stderr", text: ["[" + f.status + (f.message ? ": " + f.message : "") + "]\n"] });
      }
    }
    return out;
  }

  // JSON with sorted keys and a one-space indent, like nbformat.writes()
  function stableStringify(v) {
    const sort = (x) => {
      if (Array.isArray(x)) return x.map(sort);
      if (x && typeof x === "object") {
        const o = {};
        for (const k of Object.keys(x).sort()) o[k] = sort(x[k]);
        return o;
      }
      return x;
    };
    return JSON.stringify(sort(v), null, 1) + "\n";
  }

  // model -> .ipynb text (nbformat 4.5: cells carry ids)
  function serialize(model) {
    const engine = model.engine === "python" ? "python" : "sage";
    const nb = Object.assign({ metadata: {} }, model.nb || {});
    nb.nbformat = 4;
    nb.nbformat_minor = Math.max(5, Number(nb.nbformat_minor) || 0);
    nb.metadata = Object.assign({}, nb.metadata);
    if (!model.nb || engineOf(nb.metadata) !== engine) {
      nb.metadata.kernelspec = KERNELS[engine].kernelspec;
      nb.metadata.language_info = Object.assign({}, nb.metadata.language_info, KERNELS[engine].language_info);
    }
    nb.cells = model.cells.map((c) => {
      const keep = Object.assign({}, c.nb || {});
      const execution_count = keep.execution_count;
      delete keep.execution_count;
      const cell = Object.assign({ metadata: {} }, keep, { id: c.id, source: lines(c.input) });
      if (c.type === "markdown" || c.type === "html") {
        cell.cell_type = "markdown";
        // an HTML cell of a worksheet is Markdown in a notebook (Markdown passes HTML through)
      } else if (c.type === "raw") {
        cell.cell_type = "raw";
      } else {
        cell.cell_type = "code";
        cell.execution_count = Number.isInteger(execution_count) ? execution_count : null;
        cell.outputs = outputsOut(c.outputs, cell.execution_count);
      }
      if (cell.cell_type === "code") delete cell.attachments;
      return cell;
    });
    return stableStringify(nb);
  }

  // a .sagews worksheet (its text) -> .ipynb text; per-cell engines other than the worksheet's own are
  // noted in the cell's metadata (a notebook has one kernel)
  function fromWorksheet(text) {
    const ws = SW.worksheet.parse(text);
    let count = 0;
    const model = {
      engine: ws.engine,
      cells: ws.cells.map((c) => {
        const nb = c.type || c.engine === ws.engine ? {} : { metadata: { sagews: { engine: c.engine } } };
        if (!c.type && c.outputs.length) nb.execution_count = ++count;
        return { ...c, nb };
      }),
    };
    return serialize(model);
  }

  SW.notebook = { parse, serialize, fromWorksheet, NotebookError, isNotebook: (p) => /\.ipynb$/i.test(p) };
})();
