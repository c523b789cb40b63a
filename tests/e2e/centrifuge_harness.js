// Test harness around the real centrifuge-js browser bundle (loaded before this file).
// The e2e test drives it through page.evaluate: window.sdk.start(name, url, token) opens one
// Centrifuge client; its events go to window.sdk.events as {name, event, ...} objects;
// window.sdk.call(name, op, args) runs one SDK call and returns {result} or {code, message}.
(() => {
  const events = [];
  const clients = {};
  const tokenWaiters = {};
  const out = (event) => events.push(event);

  function start(name, url, token) {
    tokenWaiters[name] = [];
    const centrifuge = new Centrifuge(url, {
      token,
      getToken: () => new Promise((resolve) => {
        tokenWaiters[name].push(resolve);
        out({ name, event: 'getToken' });
      }),
      minReconnectDelay: 100,
      maxReconnectDelay: 500,
    });
    clients[name] = { centrifuge, subs: {} };
    centrifuge.on('connected', (ctx) => out({ name, event: 'connected', client: ctx.client }));
    centrifuge.on('connecting', (ctx) => out({ name, event: 'connecting', code: ctx.code, reason: ctx.reason }));
    centrifuge.on('disconnected', (ctx) => out({ name, event: 'disconnected', code: ctx.code, reason: ctx.reason }));
    centrifuge.on('error', (ctx) => out({
      name, event: 'error', type: ctx.type, code: ctx.error && ctx.error.code,
    }));
    centrifuge.connect();
  }

  const ops = {
    subscribe(client, name, { channel }) {
      const sub = client.centrifuge.newSubscription(channel, { joinLeave: true });
      client.subs[channel] = sub;
      sub.on('subscribed', (ctx) => out({
        name, event: 'subscribed', channel, recoverable: ctx.recoverable,
        wasRecovering: ctx.wasRecovering, recovered: ctx.recovered,
        streamPosition: ctx.streamPosition || null,
      }));
      sub.on('publication', (ctx) => out({ name, event: 'publication', channel, data: ctx.data, offset: ctx.offset }));
      sub.on('join', (ctx) => out({ name, event: 'join', channel, user: ctx.info.user }));
      sub.on('leave', (ctx) => out({ name, event: 'leave', channel, user: ctx.info.user }));
      sub.on('unsubscribed', (ctx) => out({ name, event: 'unsubscribed', channel, code: ctx.code, reason: ctx.reason }));
      sub.subscribe();
    },
    presence: (client, name, { channel }) => client.centrifuge.presence(channel),
    presenceStats: (client, name, { channel }) => client.centrifuge.presenceStats(channel),
    history: (client, name, { channel, options }) => client.centrifuge.history(channel, options),
    publish: (client, name, { channel, data }) => client.centrifuge.publish(channel, data),
    subPublish: (client, name, { channel, data }) => client.subs[channel].publish(data),
    token(client, name, { token }) {
      for (const resolve of tokenWaiters[name].splice(0)) resolve(token);
    },
    disconnect: (client) => client.centrifuge.disconnect(),
  };

  async function call(name, op, args) {
    try {
      const result = await ops[op](clients[name], name, args || {});
      return { result: result === undefined ? null : result };
    } catch (err) {
      return { code: err.code, message: err.message };
    }
  }

  // The first event at or after index `from` named `event` whose fields include `match`.
  function find(from, event, match) {
    for (let i = from; i < events.length; i++) {
      const e = events[i];
      if (e.event === event && Object.entries(match).every(([k, v]) => e[k] === v)) {
        return { index: i, event: e };
      }
    }
    return null;
  }

  window.sdk = { events, start, call, find };
})();
