// The entry point esbuild bundles (static/build.sh) into vendor/yjs/collab.js: Yjs, its CodeMirror 5
// binding and the awareness protocol, as one classic script that sets window.SWCollabLib (no bundler
// or module loader at run time; the page keeps its CSP script-src 'self').
import * as Y from "yjs";
import { CodemirrorBinding } from "y-codemirror";
import * as awarenessProtocol from "y-protocols/awareness";

window.SWCollabLib = { Y, CodemirrorBinding, awarenessProtocol };
