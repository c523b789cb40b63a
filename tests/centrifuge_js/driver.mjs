// Drives the real centrifuge-js SDK (pinned in package.json) from the test suite.
// argv: <websocket url> <initial token or "-">
// stdin: one JSON command a line; stdout: one JSON event a line.
//   {"op": "subscribe", "channel": C}       -> subscribing / subscribed / publication / sub_error / unsubscribed
//   {"op": "presence" | "presenceStats" | "history", "channel": C, ...} -> {"event": "result", "op", "result"} or {"event": "call_error", "op", "code"}
//   {"op": "publish", "channel": C, "data": D} -> result / call_error
//   {"op": "token", "token": T}            answers the SDK's pending getToken calls
//   {"op": "disconnect"}
import { createInterface } from 'node:readline';
import { Centrifuge } from 'centrifuge';

const [url, firstToken] = process.argv.slice(2);
const out = (event) => process.stdout.write(JSON.stringify(event) + '\n');
const tokenWaiters = [];

const centrifuge = new Centrifuge(url, {
  websocket: WebSocket, // Node's own (node --experimental-websocket)
  token: firstToken === '-' ? '' : firstToken,
  getToken: () => new Promise((resolve) => { tokenWaiters.push(resolve); out({ event: 'getToken' }); }),
  minReconnectDelay: 100,
  maxReconnectDelay: 500,
});
centrifuge.on('connected', (ctx) => out({ event: 'connected', client: ctx.client }));
centrifuge.on('connecting', (ctx) => out({ event: 'connecting', code: ctx.code, reason: ctx.reason }));
centrifuge.on('disconnected', (ctx) => out({ event: 'disconnected', code: ctx.code, reason: ctx.reason }));
centrifuge.on('error', (ctx) => out({ event: 'error', type: ctx.type, code: ctx.error && ctx.error.code, message: ctx.error && ctx.error.message }));

const subs = {};
const ops = {
  subscribe({ channel }) {
    const sub = centrifuge.newSubscription(channel, { joinLeave: true });
    subs[channel] = sub;
    sub.on('subscribing', (ctx) => out({ event: 'subscribing', channel, code: ctx.code }));
    sub.on('subscribed', (ctx) => out({
      event: 'subscribed', channel, recoverable: ctx.recoverable, wasRecovering: ctx.wasRecovering,
      recovered: ctx.recovered, streamPosition: ctx.streamPosition || null,
    }));
    sub.on('publication', (ctx) => out({ event: 'publication', channel, data: ctx.data, offset: ctx.offset }));
    sub.on('join', (ctx) => out({ event: 'join', channel, user: ctx.info.user, client: ctx.info.client }));
    sub.on('leave', (ctx) => out({ event: 'leave', channel, user: ctx.info.user, client: ctx.info.client }));
    sub.on('error', (ctx) => out({ event: 'sub_error', channel, code: ctx.error.code, message: ctx.error.message }));
    sub.on('unsubscribed', (ctx) => out({ event: 'unsubscribed', channel, code: ctx.code, reason: ctx.reason }));
    sub.subscribe();
  },
  async presence({ channel }) { return centrifuge.presence(channel); },
  async presenceStats({ channel }) { return centrifuge.presenceStats(channel); },
  async history({ channel, limit, since, reverse }) { return centrifuge.history(channel, { limit, since, reverse }); },
  async publish({ channel, data }) { return centrifuge.publish(channel, data); },
  async rpc({ method }) { return centrifuge.rpc(method, {}); },
  token({ token }) { for (const w of tokenWaiters.splice(0)) w(token); },
  disconnect() { centrifuge.disconnect(); },
};

createInterface({ input: process.stdin }).on('line', async (line) => {
  const cmd = JSON.parse(line);
  try {
    const result = await ops[cmd.op](cmd);
    if (result !== undefined) out({ event: 'result', op: cmd.op, result });
  } catch (err) {
    out({ event: 'call_error', op: cmd.op, code: err.code, message: err.message });
  }
}).on('close', () => { centrifuge.disconnect(); process.exit(0); });

centrifuge.connect();
