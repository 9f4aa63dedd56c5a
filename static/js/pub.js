// Read-only views of published content (docs/publishing.md). /pub/<slug> serves pub.html, which renders
//   * a published file: /pub/<slug>/raw -> {path, workspace, text|b64, published}
//   * a published folder or workspace (a site): /pub/<slug>/raw -> {path: "dir/", site: {files: [...]}},
//     and each file of it at /pub/<slug>?path=<relative path> (data from /pub/<slug>/raw?path=...).
// Relative links between the site's files stay inside the site; its images are fetched as data.
"use strict";
(function () {
  const SW = window.SW;
  const { el, clear, $ } = SW.util;
  const IMAGE = { png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", gif: "image/gif", webp: "image/webp" };
  const ext = (p) => (p.match(/\.([A-Za-z0-9]+)$/) || ["", ""])[1].toLowerCase();

  // "a/b/../c.md" relative to dir "x/" -> "x/a/c.md"; null when it leaves the site
  function joinPath(dir, rel) {
    const parts = (dir + rel.split(/[?#]/)[0]).split("/");
    const out = [];
    for (const p of parts) {
      if (p === "" || p === ".") continue;
      if (p === "..") {
        if (!out.length) return null;
        out.pop();
      } else out.push(decodeURIComponent(p));
    }
    return out.join("/");
  }

  function siteResolver(slug, files, current) {
    const dir = current.includes("/") ? current.slice(0, current.lastIndexOf("/") + 1) : "";
    const have = new Set(files.map((f) => f.path));
    return (ref, kind) => {
      const target = joinPath(dir, ref);
      if (target === null || !have.has(target)) return null;
      if (kind === "a") return siteUrl(slug, target);
      if (!IMAGE[ext(target)]) return null;
      return SW.api.pubRaw(slug, target).then((r) => (r.b64 ? "data:" + IMAGE[ext(target)] + ";base64," + r.b64.replace(/[^A-Za-z0-9+/=]/g, "") : null));
    };
  }

  const siteUrl = (slug, path) => "/pub/" + encodeURIComponent(slug) + (path ? "?path=" + encodeURIComponent(path) : "");

  // one file's content into box (also used for a plain published file)
  function renderFile(box, data, opts) {
    const path = data.path;
    if (data.b64 !== undefined) {
      if (IMAGE[ext(path)]) box.append(el("img", { class: "out-img", alt: path, src: "data:" + IMAGE[ext(path)] + ";base64," + String(data.b64).replace(/[^A-Za-z0-9+/=]/g, "") }));
      else box.append(el("p", { class: "hint" }, "Binary file (" + SW.util.fmtSize(data.size) + "): not shown."));
      return;
    }
    const text = data.text || "";
    if (/\.(sagews|ipynb)$/i.test(path)) {
      try {
        SW.worksheet.renderCells(box, path, text, opts);
      } catch (e) {
        box.append(el("p", { class: "hint", role: "alert" }, e.message), el("pre", { class: "pub-text" }, text));
      }
    } else if (/\.(md|markdown)$/i.test(path)) box.append(el("section", { class: "pub-cell text-cell" }, SW.markdown.render(text, "markdown", null, opts)));
    else if (/\.html?$/i.test(path)) box.append(el("section", { class: "pub-cell text-cell" }, SW.markdown.render(text, "html", null, opts)));
    else box.append(el("pre", { class: "pub-text" }, text));
  }

  function header(box, title, data) {
    SW.util.append(box, [el("h1", { class: "doc-path" }, title), data.workspace ? el("p", { class: "hint" }, "From workspace ", data.workspace, data.published ? " · published " + SW.util.fmtTime(data.published) : "") : null]);
  }

  function render(box, data) {
    clear(box);
    document.title = data.path + " — published on Sage Workspaces";
    header(box, data.path, data);
    renderFile(box, data);
  }

  const INDEX = ["index.sagews", "index.ipynb", "index.md", "README.md", "readme.md", "index.html"];

  // the site's root (or a folder of it): its file list, and its index page below when there is one
  async function renderSite(box, slug, site, dir) {
    clear(box);
    const root = site.path === "/" ? site.workspace : site.path.replace(/\/$/, "");
    document.title = root + " — published on Sage Workspaces";
    header(box, root + (dir ? " / " + dir.replace(/\/$/, "") : ""), site);
    const files = site.site.files.filter((f) => f.path.startsWith(dir));
    const here = new Map();
    for (const f of files) {
      const rest = f.path.slice(dir.length);
      const name = rest.includes("/") ? rest.slice(0, rest.indexOf("/") + 1) : rest;
      if (!here.has(name)) here.set(name, f);
    }
    const ul = el("ul", { class: "site-files", "aria-label": "Files" });
    if (dir) {
      const up = dir.slice(0, -1);
      ul.append(el("li", {}, el("a", { href: siteUrl(slug, up.includes("/") ? up.slice(0, up.lastIndexOf("/") + 1) : "") }, "↑ up")));
    }
    for (const [name, f] of [...here].sort((a, b) => (b[0].endsWith("/") - a[0].endsWith("/")) || a[0].localeCompare(b[0]))) {
      const isDir = name.endsWith("/");
      ul.append(el("li", {}, el("a", { href: siteUrl(slug, dir + name) }, isDir ? "▸ " + name : name), isDir ? null : el("span", { class: "size" }, " " + SW.util.fmtSize(f.size))));
    }
    if (!here.size) ul.append(el("li", { class: "empty" }, "No files."));
    box.append(el("nav", { class: "site-nav" }, ul));
    if ((site.site.skipped || []).length) box.append(el("p", { class: "hint" }, site.site.skipped.length + " file(s) not published (binary or too large)."));
    const index = INDEX.map((n) => dir + n).find((p) => files.some((f) => f.path === p));
    if (index) {
      const page = el("article", { class: "site-page" });
      box.append(page);
      renderFile(page, await SW.api.pubRaw(slug, index), { resolve: siteResolver(slug, site.site.files, index) });
    }
  }

  async function renderSiteFile(box, slug, site, path) {
    clear(box);
    const data = await SW.api.pubRaw(slug, path);
    document.title = path + " — published on Sage Workspaces";
    const parts = path.split("/");
    const crumbs = el("nav", { class: "crumbs site-crumbs", "aria-label": "Site" }, el("a", { href: siteUrl(slug) }, site.path === "/" ? site.workspace : site.path.replace(/\/$/, "")));
    parts.forEach((p, i) => crumbs.append(" / ", i < parts.length - 1 ? el("a", { href: siteUrl(slug, parts.slice(0, i + 1).join("/") + "/") }, p) : el("span", {}, p)));
    box.append(crumbs);
    header(box, path, site);
    renderFile(box, data, { resolve: siteResolver(slug, site.site.files, path) });
  }

  async function main() {
    const box = $("#pub");
    const slug = decodeURIComponent(location.pathname.replace(/^\/pub\//, "").replace(/\/+$/, ""));
    const path = new URLSearchParams(location.search).get("path");
    try {
      const top = await SW.api.pubRaw(slug);
      if (!top.site) render(box, top);
      else if (!path || path.endsWith("/")) await renderSite(box, slug, top, path || "");
      else await renderSiteFile(box, slug, top, path);
    } catch (e) {
      clear(box).append(el("p", { class: "hint", role: "alert" }, e.status === 404 ? "This page is not published (any more)." : "Could not load: " + e.message));
    }
  }
  SW.pub = { render, joinPath };
  window.addEventListener("DOMContentLoaded", main);
})();
