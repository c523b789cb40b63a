// Arena Realtime JavaScript client (ES module, no dependencies).
//
//   import { ArenaClient } from "/static/arena-realtime.js";
//   const client = new ArenaClient("wss://example.com/ws", { getToken: async () => accessToken });
//   const sub = client.subscribe("proposals:42", {
//     publication: (data, pub) => render(data),   // every publication, in order, exactly once
//     resync: (info) => refetchOverRest(),        // history was lost: reload state over REST
//   });
//   client.addEventListener("state", (e) => console.log(e.detail.state));
//   client.connect();
//
// The client reconnects by itself (exponential backoff with jitter) and resubscribes every
// channel with `since` = the last offset and epoch it saw, so publications missed while it was
// away arrive in order without duplicates. When the server cannot recover them (history expired
// or the epoch changed) the subscription's `resync` callback runs instead. See docs/protocol.md.

// Codes after which reconnecting cannot help: 4003 logged out (the session was revoked; the
// cached access token would still verify), 4005 too many subscriptions, 4006 too many connections.
const NO_RECONNECT = new Set([4003, 4005, 4006]);

export const CLOSE_CODES = Object.freeze({
  GOING_AWAY: 1001,
  UNSUPPORTED: 1003,
  TOO_BIG: 1009,
  PROTOCOL: 4000,
  UNAUTHENTICATED: 4001,
  FORBIDDEN: 4003,
  SLOW_CONSUMER: 4004,
  TOO_MANY_SUBSCRIPTIONS: 4005,
  TOO_MANY_CONNECTIONS: 4006,
  RATE_LIMITED: 4029,
});

export class ArenaError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

class Subscription {
  constructor(client, channel, handlers) {
    this.client = client;
    this.channel = channel;
    this.handlers = handlers;
    this.offset = null; // last offset delivered to the application
    this.epoch = null;
    this.active = false;
  }

  _since() {
    return this.offset === null ? undefined : { offset: this.offset, epoch: this.epoch };
  }

  _deliver(pub) {
    if (this.epoch !== null && pub.epoch !== this.epoch) return; // stale stream
    if (this.offset !== null && pub.offset <= this.offset) return; // duplicate
    this.offset = pub.offset;
    this.epoch = pub.epoch;
    if (this.handlers.publication) this.handlers.publication(pub.data, pub);
  }

  _resync(info) {
    this.offset = info.offset;
    this.epoch = info.epoch;
    if (this.handlers.resync) this.handlers.resync(info);
    this.client._emit("recovery", { channel: this.channel, recovered: false });
  }

  unsubscribe() {
    return this.client.unsubscribe(this.channel);
  }
}

export class ArenaClient extends EventTarget {
  /**
   * @param {string} url WebSocket URL of /ws.
   * @param {object} options
   * @param {() => Promise<string>|string} options.getToken returns a valid access token.
   * @param {number} [options.minDelay=500] first reconnect delay (ms).
   * @param {number} [options.maxDelay=15000] longest reconnect delay (ms).
   * @param {number} [options.timeout=10000] command reply timeout (ms).
   */
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.getToken = options.getToken;
    this.minDelay = options.minDelay ?? 500;
    this.maxDelay = options.maxDelay ?? 15000;
    this.timeout = options.timeout ?? 10000;
    this.state = "disconnected";
    this.subscriptions = new Map();
    this._pending = new Map();
    this._nextId = 1;
    this._attempt = 0;
    this._ws = null;
    this._timer = null;
    this._closedByUser = false;
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state, detail = {}) {
    this.state = state;
    this._emit("state", { state, ...detail });
  }

  /** Open the connection (and keep it open until close()). */
  connect() {
    this._closedByUser = false;
    if (this._ws) return;
    this._setState(this._attempt ? "reconnecting" : "connecting");
    const ws = new WebSocket(this.url);
    this._ws = ws;
    ws.onopen = () => this._onOpen();
    ws.onmessage = (event) => this._onMessage(event.data);
    ws.onclose = (event) => this._onClose(event.code, event.reason);
    ws.onerror = () => {}; // onclose follows with the code
  }

  /** Close for good; no reconnect. */
  close() {
    this._closedByUser = true;
    clearTimeout(this._timer);
    if (this._ws) this._ws.close(1000, "bye");
    this._setState("closed");
  }

  async _onOpen() {
    try {
      const token = await this.getToken();
      await this._command("authenticate", { token });
      const recovering = this._attempt > 0;
      this._attempt = 0;
      this._setState("connected");
      for (const sub of this.subscriptions.values()) {
        await this._subscribe(sub, recovering);
      }
    } catch (error) {
      this._emit("error", { error });
      if (this._ws) this._ws.close(4000, "setup failed");
    }
  }

  _onMessage(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (message.type === "reply") {
      const waiter = this._pending.get(message.id);
      if (!waiter) return;
      this._pending.delete(message.id);
      clearTimeout(waiter.timer);
      if (message.error) waiter.reject(new ArenaError(message.error.code, message.error.message));
      else waiter.resolve(message.result);
    } else if (message.type === "pub") {
      const sub = this.subscriptions.get(message.channel);
      if (sub && sub.active) sub._deliver(message);
    } else if (message.type === "resync") {
      const sub = this.subscriptions.get(message.channel);
      if (sub) sub._resync(message);
    } else if (message.type === "unsubscribe" && !("result" in message) && !("error" in message)) {
      // The server ended the subscription (4403: access revoked): forget it, so a reconnect
      // does not subscribe again, and tell the application why.
      const sub = this.subscriptions.get(message.channel);
      if (!sub) return;
      this.subscriptions.delete(message.channel);
      sub.active = false;
      const info = { channel: message.channel, code: message.code, reason: message.reason };
      if (sub.handlers.unsubscribed) sub.handlers.unsubscribed(info);
      this._emit("unsubscribed", info);
    } else {
      this._emit(message.type, message);
    }
  }

  _onClose(code, reason) {
    this._ws = null;
    for (const sub of this.subscriptions.values()) sub.active = false;
    for (const waiter of this._pending.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(new ArenaError("disconnected", "connection closed"));
    }
    this._pending.clear();
    this._emit("disconnect", { code, reason });
    if (this._closedByUser) return;
    if (NO_RECONNECT.has(code)) {
      this._setState("closed", { code, reason });
      return;
    }
    this._attempt += 1;
    const base = Math.min(this.maxDelay, this.minDelay * 2 ** (this._attempt - 1));
    const slow = code === CLOSE_CODES.RATE_LIMITED ? 2 : 1;
    const delay = (base / 2 + Math.random() * (base / 2)) * slow; // "equal jitter"
    this._setState("reconnecting", { code, reason, delay });
    this._timer = setTimeout(() => this.connect(), delay);
  }

  _command(type, fields = {}) {
    return new Promise((resolve, reject) => {
      if (!this._ws || this._ws.readyState !== WebSocket.OPEN) {
        reject(new ArenaError("disconnected", "not connected"));
        return;
      }
      const id = this._nextId++;
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new ArenaError("timeout", `${type} timed out`));
      }, this.timeout);
      this._pending.set(id, { resolve, reject, timer });
      this._ws.send(JSON.stringify({ id, type, ...fields }));
    });
  }

  async _subscribe(sub, recovering) {
    const since = sub._since();
    const result = await this._command("subscribe", {
      channel: sub.channel,
      ...(since ? { since } : {}),
    });
    sub.active = true;
    if (since) {
      if (result.recovered) {
        for (const pub of result.publications) sub._deliver(pub);
        this._emit("recovery", { channel: sub.channel, recovered: true, count: result.publications.length });
      } else {
        sub._resync({ channel: sub.channel, offset: result.offset, epoch: result.epoch, recovered: false });
      }
    } else {
      sub.offset = result.offset;
      sub.epoch = result.epoch;
    }
    if (sub.handlers.subscribed) sub.handlers.subscribed(result, { recovering });
    return result;
  }

  /**
   * Subscribe to `channel`. `handlers.publication(data, pub)` gets every publication;
   * `handlers.resync(info)` runs when publications were lost; `handlers.subscribed(result)` after
   * each (re)subscribe; `handlers.unsubscribed({channel, code, reason})` when the server ended
   * the subscription (code 4403: access revoked; it is not resubscribed). Pass `since: {offset, epoch}` to resume from a known position (for
   * example one saved in sessionStorage before a page reload).
   */
  subscribe(channel, handlers = {}) {
    if (this.subscriptions.has(channel)) return this.subscriptions.get(channel);
    const sub = new Subscription(this, channel, handlers);
    if (handlers.since) {
      sub.offset = handlers.since.offset;
      sub.epoch = handlers.since.epoch;
    }
    this.subscriptions.set(channel, sub);
    if (this.state === "connected") {
      this._subscribe(sub, false).catch((error) => {
        this.subscriptions.delete(channel);
        if (handlers.error) handlers.error(error);
        else this._emit("error", { error, channel });
      });
    }
    return sub;
  }

  /** Stop receiving `channel`. */
  async unsubscribe(channel) {
    const sub = this.subscriptions.get(channel);
    if (!sub) return;
    this.subscriptions.delete(channel);
    if (sub.active && this.state === "connected") {
      await this._command("unsubscribe", { channel }).catch(() => {});
    }
  }

  /** The newest `limit` publications of `channel`, or those after `since`. */
  history(channel, { since, limit = 100 } = {}) {
    return this._command("history", { channel, limit, ...(since ? { since } : {}) });
  }

  /** Extend the session with a fresh access token without reconnecting. */
  refresh(token) {
    return this._command("refresh", { token });
  }

  /** Round-trip check. */
  ping() {
    return this._command("ping");
  }

  /** Who is subscribed to `channel` (namespaces with presence on). */
  presence(channel) {
    return this._command("presence", { channel });
  }

  /** Client and user counts of `channel`. */
  presenceStats(channel) {
    return this._command("presence_stats", { channel });
  }
}
