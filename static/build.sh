#!/usr/bin/env bash
# Reproducible build of static/vendor/: `npm ci` from the checked-in package-lock.json, then copy the few
# files the browser loads. static/vendor/ is generated (gitignored); nothing is fetched at run time.
# Idempotent: skips npm ci when node_modules matches the lock (stamp), always re-copies (cheap).
set -euo pipefail
cd "$(dirname "$0")"
stamp=node_modules/.sagews-lock-stamp
want=$(sha256sum package-lock.json | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi
rm -rf vendor.tmp
mkdir -p vendor.tmp/codemirror/mode vendor.tmp/codemirror/addon vendor.tmp/katex vendor.tmp/sockjs \
  vendor.tmp/markdown-it vendor.tmp/dompurify vendor.tmp/xterm vendor.tmp/yjs
cp node_modules/sockjs-client/dist/sockjs.min.js vendor.tmp/sockjs/
cp node_modules/codemirror/lib/codemirror.js node_modules/codemirror/lib/codemirror.css vendor.tmp/codemirror/
# python: code cells; markdown, htmlmixed (+ the xml, javascript, css modes it nests): text cells
for m in python markdown xml htmlmixed javascript css; do cp -r node_modules/codemirror/mode/$m vendor.tmp/codemirror/mode/; done
cp node_modules/codemirror/addon/edit/matchbrackets.js vendor.tmp/codemirror/addon/
# Tab completion in cells (the list of the engine's matches)
cp node_modules/codemirror/addon/hint/show-hint.js node_modules/codemirror/addon/hint/show-hint.css vendor.tmp/codemirror/addon/
# the workspace terminal (static/js/terminal.js)
cp node_modules/@xterm/xterm/lib/xterm.js node_modules/@xterm/xterm/css/xterm.css vendor.tmp/xterm/
cp node_modules/@xterm/addon-fit/lib/addon-fit.js vendor.tmp/xterm/
cp node_modules/katex/dist/katex.min.js node_modules/katex/dist/katex.min.css vendor.tmp/katex/
cp -r node_modules/katex/dist/fonts vendor.tmp/katex/
cp node_modules/markdown-it/dist/browser/markdown-it.umd.min.js vendor.tmp/markdown-it/markdown-it.min.js
cp node_modules/dompurify/dist/purify.min.js vendor.tmp/dompurify/
# shared text documents (static/js/collab.js): Yjs + y-codemirror + y-protocols' awareness are ES modules,
# bundled by esbuild (from npm, pinned in the lock; no network) into one classic script
node_modules/.bin/esbuild src/collab-entry.js --bundle --minify --format=iife --target=es2019 \
  --alias:codemirror=./src/codemirror-global.js --log-level=warning --outfile=vendor.tmp/yjs/collab.js
for p in sockjs-client codemirror katex markdown-it dompurify @xterm/xterm @xterm/addon-fit yjs y-codemirror \
  y-protocols lib0 esbuild; do
  node -e "const p=require('./node_modules/$p/package.json'); console.log(p.name+' '+p.version+' '+p.license)"
done > vendor.tmp/VERSIONS
rm -rf vendor && mv vendor.tmp vendor
echo "static: vendor/ built ($(tr '\n' ';' < vendor/VERSIONS))"
