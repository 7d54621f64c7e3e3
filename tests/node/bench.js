// `make bench`'s official-client figure: per-call time of the @itchio/butlerd client (which writes
// each message and its newline in two writes) beside a raw client that writes whole lines, both
// doing connect, Meta.Authenticate, Version.Get, close against the same daemon in the same run.
// Reads BUTLERD_ADDRESS, BUTLERD_SECRET and BENCH_CALLS; prints one JSON line of medians in ms.
"use strict";
const net = require("net");
const { Client } = require("@itchio/butlerd/lib/client");
const { createRequest } = require("@itchio/butlerd/lib/support");

const VersionGet = createRequest("Version.Get");
const address = process.env.BUTLERD_ADDRESS;
const secret = process.env.BUTLERD_SECRET;
const calls = parseInt(process.env.BENCH_CALLS || "200", 10);

function ms(start) {
  return Number(process.hrtime.bigint() - start) / 1e6;
}

async function official() {
  const client = new Client({ secret, tcp: { address } });
  const start = process.hrtime.bigint();
  const res = await client.call(VersionGet, {});
  if (!res.version) throw new Error("Version.Get has no version");
  return ms(start);
}

function raw() {
  const [host, port] = address.split(":");
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const socket = net.connect(parseInt(port, 10), host);
    let buf = "";
    let answered = 0;
    socket.on("connect", () => {
      socket.write(JSON.stringify({ jsonrpc: "2.0", id: 1, method: "Meta.Authenticate", params: { secret } }) + "\n");
    });
    socket.on("data", (chunk) => {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if (msg.error) return reject(new Error(JSON.stringify(msg.error)));
        answered += 1;
        if (answered === 1) {
          socket.write(JSON.stringify({ jsonrpc: "2.0", id: 2, method: "Version.Get", params: {} }) + "\n");
        } else {
          socket.end();
          resolve(ms(start));
        }
      }
    });
    socket.on("error", reject);
  });
}

function median(xs) {
  xs.sort((a, b) => a - b);
  return xs[Math.floor(xs.length / 2)];
}

async function sample(f) {
  for (let i = 0; i < 10; i++) await f();
  const xs = [];
  for (let i = 0; i < calls; i++) xs.push(await f());
  return median(xs);
}

(async () => {
  const officialMs = await sample(official);
  const rawMs = await sample(raw);
  console.log(JSON.stringify({ official_ms: officialMs, raw_ms: rawMs }));
})().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
