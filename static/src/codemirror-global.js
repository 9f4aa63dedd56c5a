// y-codemirror imports "codemirror": the page's own CodeMirror 5 (vendor/codemirror/codemirror.js,
// loaded before the bundle), not a second copy.
export default window.CodeMirror;
