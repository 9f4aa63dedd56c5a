// Read-only view of a published file: /pub/<slug> serves pub.html, which renders /pub/<slug>/raw.
"use strict";
(function () {
  const SW = window.SW;
  const { el, clear, $ } = SW.util;

  function render(box, data) {
    clear(box);
    document.title = data.path + " — published on Sage Workspaces";
    SW.util.append(box, [el("h1", { class: "doc-path" }, data.path), data.workspace ? el("p", { class: "hint" }, "From workspace ", data.workspace, data.published ? " · published " + SW.util.fmtTime(data.published) : "") : null]);
    if (/\.sagews$/.test(data.path)) {
      for (const c of SW.worksheet.parse(data.text).cells) {
        if (!c.input.trim() && !c.outputs.length) continue;
        const out = el("div", { class: "cell-output" });
        const v = new SW.worksheet.OutputView(out);
        c.outputs.forEach((f) => v.add(f));
        box.append(el("section", { class: "cell pub-cell" }, el("pre", { class: "cell-src" }, c.input), out));
      }
    } else {
      box.append(el("pre", { class: "pub-text" }, data.text));
    }
  }

  async function main() {
    const box = $("#pub");
    const slug = location.pathname.replace(/^\/pub\//, "").replace(/\/+$/, "");
    try {
      render(box, await SW.api.pubRaw(decodeURIComponent(slug)));
    } catch (e) {
      clear(box).append(el("p", { class: "hint", role: "alert" }, e.status === 404 ? "This page is not published (any more)." : "Could not load: " + e.message));
    }
  }
  SW.pub = { render };
  window.addEventListener("DOMContentLoaded", main);
})();
