// Calls Version.Get through the official @itchio/butlerd client in a loop, one connection per
// call as the itch app makes them, until stdin closes; then prints one JSON line: how many calls,
// how many failed (and the first few errors), and which versions answered. Reads BUTLERD_ADDRESS
// and BUTLERD_SECRET. Prints "ready" once the first call succeeded.
"use strict";
const { Client } = require("@itchio/butlerd/lib/client");
const { createRequest } = require("@itchio/butlerd/lib/support");

const VersionGet = createRequest("Version.Get");
const client = new Client({
  secret: process.env.BUTLERD_SECRET,
  tcp: { address: process.env.BUTLERD_ADDRESS },
});

let stop = false;
process.stdin.on("end", () => {
  stop = true;
});
process.stdin.resume();

(async () => {
  const versions = {};
  const errors = [];
  let calls = 0;
  let failures = 0;
  while (!stop) {
    calls += 1;
    try {
      const res = await client.call(VersionGet, {});
      if (calls === 1) console.log("ready");
      versions[res.version] = (versions[res.version] || 0) + 1;
    } catch (e) {
      failures += 1;
      if (errors.length < 5) errors.push(String(e && e.message ? e.message : e));
    }
  }
  console.log(JSON.stringify({ calls, failures, errors, versions }));
  process.exit(0);
})();
