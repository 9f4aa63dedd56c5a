// Markdown and HTML text cells: markdown-it renders, DOMPurify sanitizes, KaTeX typesets the math.
//   * `$x$`, `$$x$$` (inline) and `$$ ... $$` blocks are cut out before Markdown sees them (so `a_1 * b_2`
//     stays TeX) and become <span data-sw-math> placeholders that katex.render() fills in as DOM nodes
//     (katex.renderToString would need inline style attributes, which the CSP forbids).
//   * The HTML (markdown-it's own output and any raw HTML the user wrote) goes through DOMPurify into a
//     DocumentFragment: no scripts, no event handlers, no forms or frames, no style/class/id attributes
//     (they could restyle or overlay the app), links open in a new tab without an opener.
//   * Images load only from data:image/... URLs or the cell's own attachments (notebook `attachment:x.png`);
//     any other src becomes a plain link, so user content never makes the browser fetch anything.
"use strict";
(function () {
  const SW = (window.SW = window.SW || {});
  const { el } = SW.util;
  let md = null;
  let purify = null;

  function mathInline(state, silent) {
    const src = state.src;
    const start = state.pos;
    if (src.charCodeAt(start) !== 0x24 /* $ */) return false;
    const display = src.charCodeAt(start + 1) === 0x24;
    const open = display ? 2 : 1;
    let pos = start + open;
    if (!display) {
      const next = src.charCodeAt(pos);
      if (next === 0x20 || next === 0x09 || next === 0x0a || isNaN(next)) return false; // "$ 5" is money
    }
    for (; pos < state.posMax; pos++) {
      const c = src.charCodeAt(pos);
      if (c === 0x5c /* \ */) {
        pos++;
        continue;
      }
      if (c !== 0x24) continue;
      if (display) {
        if (src.charCodeAt(pos + 1) === 0x24) break;
        continue;
      }
      const prev = src.charCodeAt(pos - 1);
      const after = src.charCodeAt(pos + 1);
      if (prev === 0x20 || prev === 0x09 || (after >= 0x30 && after <= 0x39)) continue;
      break;
    }
    if (pos >= state.posMax) return false;
    const tex = src.slice(start + open, pos);
    if (!tex.trim()) return false;
    if (!silent) {
      const t = state.push("math_inline", "span", 0);
      t.content = tex;
      t.markup = display ? "$$" : "$";
    }
    state.pos = pos + open;
    return true;
  }

  function mathBlock(state, startLine, endLine, silent) {
    let pos = state.bMarks[startLine] + state.tShift[startLine];
    let max = state.eMarks[startLine];
    if (state.sCount[startLine] - state.blkIndent >= 4) return false; // indented code
    if (pos + 2 > max || state.src.slice(pos, pos + 2) !== "$$") return false;
    if (silent) return true;
    let first = state.src.slice(pos + 2, max);
    let line = startLine;
    let found = false;
    let tex = "";
    if (first.trim().endsWith("$$")) {
      tex = first.trim().slice(0, -2);
      found = true;
    } else {
      const lines = [first];
      while (!found && ++line < endLine) {
        pos = state.bMarks[line] + state.tShift[line];
        max = state.eMarks[line];
        const text = state.src.slice(pos, max);
        if (text.trim().endsWith("$$")) {
          lines.push(text.trim().slice(0, -2));
          found = true;
        } else lines.push(state.src.slice(state.bMarks[line], max));
      }
      tex = lines.join("\n");
    }
    if (!found) return false;
    state.line = line + 1;
    const t = state.push("math_block", "div", 0);
    t.block = true;
    t.content = tex;
    t.map = [startLine, state.line];
    t.markup = "$$";
    return true;
  }

  function engine() {
    if (md) return md;
    md = window.markdownit({ html: true, linkify: true, typographer: false, breaks: false });
    md.inline.ruler.after("escape", "math_inline", mathInline);
    md.block.ruler.before("fence", "math_block", mathBlock, { alt: ["paragraph", "reference", "blockquote", "list"] });
    const esc = md.utils.escapeHtml;
    md.renderer.rules.math_inline = (tokens, i) => '<span data-sw-math="' + (tokens[i].markup === "$$" ? "display" : "inline") + '">' + esc(tokens[i].content) + "</span>";
    md.renderer.rules.math_block = (tokens, i) => '<div data-sw-math="display">' + esc(tokens[i].content) + "</div>\n";
    return md;
  }

  function sanitizer() {
    if (purify) return purify;
    purify = window.DOMPurify(window);
    purify.addHook("afterSanitizeAttributes", (node) => {
      // still in DOMPurify's inert document: an <img> with a src would start loading as soon as it is
      // imported into ours, so every src but an inline data: image is parked in data-sw-src (fixRefs)
      if (node.tagName === "IMG") {
        const src = (node.getAttribute("src") || "").trim();
        if (!DATA_IMAGE.test(src)) {
          node.setAttribute("data-sw-src", src);
          node.removeAttribute("src");
        }
      }
      if (node.tagName === "A" && node.hasAttribute("href")) {
        node.setAttribute("href", SW.util.safeUrl(node.getAttribute("href")));
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
      }
    });
    return purify;
  }

  const PURIFY = {
    RETURN_DOM_FRAGMENT: true,
    FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "option", "iframe", "frame", "frameset", "object", "embed", "link", "meta", "base", "dialog", "template", "video", "audio", "source", "track", "picture"],
    FORBID_ATTR: ["style", "class", "id", "name", "srcset", "action", "formaction", "target", "ping", "background", "poster"],
    ALLOW_DATA_ATTR: true,
  };

  function typeset(root) {
    for (const node of root.querySelectorAll("[data-sw-math]")) {
      const tex = node.textContent;
      try {
        window.katex.render(tex, node, { displayMode: node.dataset.swMath === "display", throwOnError: false, trust: false, maxExpand: 1000, maxSize: 50 });
      } catch (e) {
        node.textContent = tex; // KaTeX refused it: the source stays readable
      }
    }
  }

  const RELATIVE = /^(?![a-z][a-z0-9+.-]*:|\/|#)/i;
  const DATA_IMAGE = /^data:image\/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]*$/i;

  // Only images already in the document may be shown: data:image/... or a notebook attachment (or, on
  // a published site, another file of the site: opts.resolve). Relative links go through opts.resolve.
  function fixRefs(root, attachments, opts) {
    const resolve = opts && opts.resolve;
    if (resolve) {
      for (const a of root.querySelectorAll("a[href]")) {
        const href = a.getAttribute("href");
        const to = RELATIVE.test(href) ? resolve(href, "a") : null;
        if (to) {
          a.setAttribute("href", to);
          a.removeAttribute("target");
        }
      }
    }
    for (const img of root.querySelectorAll("img[data-sw-src]")) {
      const src = img.getAttribute("data-sw-src");
      img.removeAttribute("data-sw-src");
      const m = src.match(/^attachment:(.+)$/);
      const att = m && attachments && attachments[m[1]];
      if (att) {
        const mime = ["image/png", "image/jpeg", "image/gif"].find((t) => att[t]);
        if (mime) {
          img.setAttribute("src", "data:" + mime + ";base64," + String(att[mime]).replace(/[^A-Za-z0-9+/=]/g, ""));
          continue;
        }
      }
      const local = resolve && RELATIVE.test(src) ? resolve(src, "img") : null;
      if (local) {
        // a Promise of a data: URL (or null): the image is fetched as data, never by URL
        img.removeAttribute("src");
        Promise.resolve(local).then(
          (url) => (url && /^data:image\//.test(url) ? img.setAttribute("src", url) : img.replaceWith(el("span", { class: "md-noimg" }, "[image: " + src + "]"))),
          () => img.replaceWith(el("span", { class: "md-noimg" }, "[image: " + src + "]")),
        );
        continue;
      }
      const label = img.getAttribute("alt") || src || "image";
      const link = /^https?:/i.test(src) ? el("a", { href: src, target: "_blank", rel: "noopener noreferrer nofollow" }, "[image: " + label + "]") : el("span", { class: "md-noimg" }, "[image: " + label + "]");
      img.replaceWith(link);
    }
  }

  // kind: "markdown" | "html" -> a <div class="md"> with the rendered, sanitized content
  function render(src, kind, attachments, opts) {
    const html = kind === "html" ? String(src) : engine().render(String(src));
    const frag = sanitizer().sanitize(html, PURIFY);
    const box = el("div", { class: "md" });
    box.appendChild(frag);
    fixRefs(box, attachments, opts);
    typeset(box);
    return box;
  }

  SW.markdown = { render };
})();
