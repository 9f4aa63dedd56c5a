// The load generator of bench/bench_fullstack.py: the real client protocols, in node.
//   sagews:  the npm sockjs-client (websocket transport, faye-websocket in node) through HAProxy (TLS)
//   jupyter: the kernel websocket (/api/kernels/<id>/channels) through the same HAProxy
// Reads one JSON job per line on stdin ({"kind": "sagews"|"jupyter", "n": runs, ...}), answers one
// JSON line of round-trip times (ms) per job on stdout, so the Python side can interleave rounds
// while both connections stay open. NODE_PATH points at static/node_modules; NODE_EXTRA_CA_CERTS
// at the DevCA certificate.
"use strict";
const readline = require("readline");
const crypto = require("crypto");
const SockJS = require("sockjs-client");
const WebSocket = require("faye-websocket").Client;

const conns = {};

function sagews(job) {
  return new Promise((resolve, reject) => {
    const sock = new SockJS(job.url, null, {
      transports: ["websocket"],
      transportOptions: { websocket: { headers: { Cookie: job.cookie } } },
    });
    const waiting = new Map();
    let nextId = 1;
    const call = (msg) =>
      new Promise((res) => {
        msg.id = nextId++;
        waiting.set(msg.id, { res, frames: [] });
        sock.send(JSON.stringify(msg));
      });
    sock.onmessage = (e) => {
      const m = JSON.parse(e.data);
      const w = waiting.get(m.re);
      if (!w) return;
      if (["stream", "display", "result", "exception"].includes(m.type)) return;
      waiting.delete(m.re);
      w.res(m);
    };
    sock.onclose = (e) => reject(new Error("sagews closed " + e.code + " " + e.reason));
    sock.onopen = async () => {
      const hello = await call({ type: "hello", versions: [1], xsrf: job.xsrf });
      if (hello.type !== "hello") return reject(new Error(JSON.stringify(hello)));
      const opened = await call({ type: "open", workspace: job.workspace });
      if (opened.type !== "opened") return reject(new Error(JSON.stringify(opened)));
      resolve({
        async run(n) {
          const out = [];
          for (let i = 0; i < n; i++) {
            const t0 = process.hrtime.bigint();
            const r = await call({ type: "exec", session: job.workspace, code: "1+1" });
            out.push(Number(process.hrtime.bigint() - t0) / 1e6);
            if (r.status !== "ok") throw new Error(JSON.stringify(r));
          }
          return out;
        },
      });
    };
  });
}

function jupyter(job) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(job.url, [], { headers: { Authorization: "token " + job.token } });
    const session = crypto.randomUUID();
    let pending = null;
    ws.on("message", (e) => {
      const m = JSON.parse(e.data);
      if (pending && m.parent_header && m.parent_header.msg_id === pending.id && m.msg_type === "execute_reply") {
        const p = pending;
        pending = null;
        p.res(m);
      }
    });
    ws.on("close", (e) => reject(new Error("jupyter closed " + e.code)));
    const execute = () =>
      new Promise((res) => {
        const id = crypto.randomUUID();
        pending = { id, res };
        ws.send(JSON.stringify({
          header: { msg_id: id, username: "bench", session, msg_type: "execute_request", version: "5.3",
                    date: new Date().toISOString() },
          parent_header: {}, metadata: {}, channel: "shell", buffers: [],
          content: { code: "1+1", silent: false, store_history: false, user_expressions: {},
                     allow_stdin: false, stop_on_error: true },
        }));
      });
    ws.on("open", () =>
      resolve({
        async run(n) {
          const out = [];
          for (let i = 0; i < n; i++) {
            const t0 = process.hrtime.bigint();
            const r = await execute();
            out.push(Number(process.hrtime.bigint() - t0) / 1e6);
            if (r.content.status !== "ok") throw new Error(JSON.stringify(r.content));
          }
          return out;
        },
      })
    );
  });
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", async (line) => {
  const job = JSON.parse(line);
  try {
    let c = conns[job.name];
    if (!c) c = conns[job.name] = await (job.kind === "sagews" ? sagews(job) : jupyter(job));
    const times = await c.run(job.n);
    process.stdout.write(JSON.stringify({ name: job.name, times }) + "\n");
  } catch (err) {
    process.stdout.write(JSON.stringify({ name: job.name, error: String(err && err.stack || err) }) + "\n");
  }
});
rl.on("close", () => process.exit(0));
