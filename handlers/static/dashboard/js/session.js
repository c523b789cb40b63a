// The signed-in session: access + refresh tokens with refresh rotation, and an API helper.
//
// Tokens live in localStorage so that every tab shares one session. A refresh token is single
// use (a reused one revokes the whole session, see docs/security.md), so rotations are
// serialised across tabs with the Web Locks API, and a tab that finds a newer pair in storage
// adopts it instead of spending its stale token.

const STORAGE_KEY = "arena.session";
const EARLY_MS = 60_000; // refresh this long before the access token expires

export class ApiError extends Error {
  constructor(status, message, errors = null) {
    super(message);
    this.status = status;
    this.errors = errors;
  }
}

function readStored() {
  try {
    return JSON.parse(localStorage.getItem(STORAGE_KEY) || "null");
  } catch {
    return null;
  }
}

async function parse(response) {
  if (response.status === 204) return null;
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.message ? body.message : `HTTP ${response.status}`;
    throw new ApiError(response.status, message, body && body.errors);
  }
  return body;
}

async function postJson(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return parse(response);
}

/**
 * Events: "change" (signed in, tokens rotated: detail.reason), "signedout" (detail.reason).
 */
export class Session extends EventTarget {
  constructor() {
    super();
    this.data = readStored();
    this._refreshing = null;
    this._timer = null;
    window.addEventListener("storage", (event) => {
      if (event.key !== STORAGE_KEY) return;
      const next = readStored();
      if (!next) {
        this._clear("signed out in another tab");
      } else if (!this.data || next.refresh_token !== this.data.refresh_token) {
        this.data = next;
        this._schedule();
        this._emit("change", { reason: "rotated in another tab" });
      }
    });
    this._schedule();
  }

  get user() {
    return this.data ? this.data.user : null;
  }

  get signedIn() {
    return Boolean(this.data);
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _store(pair, reason) {
    this.data = {
      access_token: pair.access_token,
      refresh_token: pair.refresh_token,
      access_expires_at: Date.now() + pair.expires_in * 1000,
      user: pair.user,
    };
    localStorage.setItem(STORAGE_KEY, JSON.stringify(this.data));
    this._schedule();
    this._emit("change", { reason });
  }

  _clear(reason) {
    clearTimeout(this._timer);
    const had = this.data !== null;
    this.data = null;
    localStorage.removeItem(STORAGE_KEY);
    if (had) this._emit("signedout", { reason });
  }

  _schedule() {
    clearTimeout(this._timer);
    if (!this.data) return;
    const wait = Math.max(1000, this.data.access_expires_at - EARLY_MS - Date.now());
    this._timer = setTimeout(() => this.refresh().catch(() => {}), wait);
  }

  /** Ask for a magic link. */
  requestLink(email) {
    return postJson("/api/v1/auth/login", { email });
  }

  /** Exchange a magic-link token for a session. */
  async verify(token) {
    this._store(await postJson("/api/v1/auth/verify", { token }), "signed in");
    return this.user;
  }

  /** Accept a vendor invitation (signs the invitee in, as a vendor). */
  async acceptInvite(token) {
    this._store(await postJson("/api/v1/invites/accept", { token }), "signed in");
    return this.user;
  }

  /** A valid access token, rotating the refresh token first when it is about to expire. */
  async accessToken() {
    if (!this.data) throw new ApiError(401, "signed out");
    if (Date.now() < this.data.access_expires_at - EARLY_MS) return this.data.access_token;
    await this.refresh();
    return this.data.access_token;
  }

  /** Rotate the refresh token (at most one rotation at a time, across tabs too). */
  refresh() {
    if (!this._refreshing) {
      const run = () => this._rotate();
      const locked = navigator.locks ? navigator.locks.request("arena-refresh", run) : run();
      this._refreshing = locked.finally(() => {
        this._refreshing = null;
      });
    }
    return this._refreshing;
  }

  async _rotate() {
    const stored = readStored();
    if (!stored) {
      this._clear("signed out");
      throw new ApiError(401, "signed out");
    }
    const mine = this.data ? this.data.refresh_token : null;
    if (stored.refresh_token !== mine && stored.access_expires_at - EARLY_MS > Date.now()) {
      this.data = stored; // another tab rotated already
      this._schedule();
      this._emit("change", { reason: "rotated in another tab" });
      return;
    }
    try {
      this._store(await postJson("/api/v1/auth/refresh", { refresh_token: stored.refresh_token }), "rotated");
    } catch (error) {
      // 401: expired, revoked or reused; the session is over. Anything else is transient.
      if (error instanceof ApiError && error.status === 401) this._clear(error.message);
      throw error;
    }
  }

  /** Revoke the session on the server (closes its WebSockets) and forget it here. */
  async logout() {
    const stored = readStored();
    if (stored) {
      await postJson("/api/v1/auth/logout", { refresh_token: stored.refresh_token }).catch(() => {});
    }
    this._clear("signed out");
  }

  /** Call the REST API as this user; one refresh-and-retry on 401. Throws ApiError. */
  async api(path, { method = "GET", body, headers = {} } = {}) {
    const call = async (token) =>
      fetch(path, {
        method,
        headers: {
          Authorization: `Bearer ${token}`,
          ...(body === undefined ? {} : { "Content-Type": "application/json" }),
          ...headers,
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    let response = await call(await this.accessToken());
    if (response.status === 401 && this.data) {
      await this.refresh();
      response = await call(await this.accessToken());
    }
    if (response.status === 401) this._clear("session expired");
    return parse(response);
  }
}
