// Drives the real /static/arena-realtime.js against a running server; prints JSON lines.
// usage: node --experimental-websocket client_probe.mjs <module-path> <ws-url> <token> <channel> <count>
const [modulePath, url, token, channel, count] = process.argv.slice(2);
const { ArenaClient } = await import(modulePath);

const out = (event) => process.stdout.write(JSON.stringify(event) + "\n");
const client = new ArenaClient(url, { getToken: async () => token, minDelay: 50, maxDelay: 200 });
client.addEventListener("state", (e) => out({ event: "state", state: e.detail.state, code: e.detail.code ?? null }));
client.addEventListener("recovery", (e) => out({ event: "recovery", ...e.detail }));
let received = 0;
client.subscribe(channel, {
  publication: (data, pub) => {
    out({ event: "pub", offset: pub.offset, data });
    received += 1;
    if (received >= Number(count)) {
      client.close();
      setTimeout(() => process.exit(0), 50);
    }
  },
  subscribed: (result, info) => out({ event: "subscribed", offset: result.offset, recovering: info.recovering }),
  resync: (info) => out({ event: "resync", offset: info.offset }),
});
client.connect();
// A generous overall limit: the test, not this probe, decides how long is too long.
setTimeout(() => { out({ event: "timeout" }); process.exit(1); }, 120000);
