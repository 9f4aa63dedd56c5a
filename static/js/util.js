// DOM helpers. Every string given to el()/text() becomes a text node: user data never goes through innerHTML.
"use strict";
(function () {
  const SW = (window.SW = window.SW || {});

  // el("div", {class: "x", onclick: fn, dataset: {...}}, child, "text", [children]...)
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
      else if (k === "text") node.textContent = String(v);
      else if (k === "value") node.value = v;
      else if (k === "disabled" || k === "checked" || k === "hidden" || k === "readOnly") node[k] = !!v;
      else if (k === "href" || k === "src") node.setAttribute(k, safeUrl(String(v)));
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      if (Array.isArray(c)) append(node, c);
      else if (c instanceof Node) node.appendChild(c);
      else node.appendChild(document.createTextNode(String(c)));
    }
    return node;
  }

  // Only relative URLs, http(s), blob: and data:image/ URLs may be put into href/src.
  function safeUrl(u) {
    const t = u.trim().toLowerCase();
    if (/^(https?:|blob:|data:image\/(png|jpeg|gif);)/.test(t)) return u;
    if (/^[a-z][a-z0-9+.-]*:/.test(t)) return "about:blank";
    return u;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function $(sel, root) {
    return (root || document).querySelector(sel);
  }

  function fmtTime(t) {
    if (!t) return "never";
    const d = new Date(typeof t === "number" && t < 1e12 ? t * 1000 : t);
    if (isNaN(d.getTime())) return String(t);
    const s = (Date.now() - d.getTime()) / 1000;
    if (s < 60) return "just now";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return d.toISOString().slice(0, 16).replace("T", " ");
  }

  function fmtSize(n) {
    if (n === undefined || n === null) return "";
    if (n < 1024) return n + " B";
    if (n < 1048576) return (n / 1024).toFixed(1) + " KB";
    return (n / 1048576).toFixed(1) + " MB";
  }

  function debounce(fn, ms) {
    let t = null;
    const d = (...a) => {
      clearTimeout(t);
      t = setTimeout(() => fn(...a), ms);
    };
    d.cancel = () => clearTimeout(t);
    return d;
  }

  function b64FromBytes(bytes) {
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(s);
  }

  function bytesFromB64(b64) {
    const s = atob(b64);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  function downloadBlob(blob, name) {
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: name, class: "hidden-link" });
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // Small modal prompt built from DOM nodes (window.prompt is not keyboard-testable everywhere).
  function dialog(title, fields, okLabel) {
    return new Promise((resolve) => {
      const inputs = {};
      const form = el("form", { class: "dialog", "aria-label": title });
      form.appendChild(el("h2", {}, title));
      for (const f of fields) {
        let input;
        if (f.options) {
          input = el("select", { name: f.name }, f.options.map((o) => el("option", { value: o }, o)));
          if (f.value) input.value = f.value;
        } else {
          input = el("input", { name: f.name, type: f.type || "text", value: f.value || "", autocomplete: "off" });
        }
        inputs[f.name] = input;
        form.appendChild(el("label", {}, f.label, input));
      }
      const cancel = el("button", { type: "button", class: "secondary" }, "Cancel");
      form.appendChild(el("div", { class: "buttons" }, el("button", { type: "submit" }, okLabel || "OK"), cancel));
      const back = el("div", { class: "backdrop" }, form);
      const done = (v) => {
        back.remove();
        resolve(v);
      };
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        const out = {};
        for (const k in inputs) out[k] = inputs[k].value;
        done(out);
      });
      cancel.addEventListener("click", () => done(null));
      form.addEventListener("keydown", (e) => {
        if (e.key === "Escape") done(null);
      });
      document.body.appendChild(back);
      const first = form.querySelector("input,select");
      if (first) {
        first.focus();
        if (first.select) first.select();
      }
    });
  }

  async function confirmDialog(message) {
    const r = await dialog(message, [], "Yes");
    return r !== null;
  }

  SW.util = { el, append, clear, $, safeUrl, fmtTime, fmtSize, debounce, b64FromBytes, bytesFromB64, downloadBlob, dialog, confirmDialog };
})();
