-- Alert feeds ("strategies"), their webhook secrets, sharing, and the alerts they receive.
CREATE TABLE strategies (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    version     integer NOT NULL DEFAULT 1 CHECK (version >= 1)
);
CREATE INDEX strategies_owner_created ON strategies (owner_id, created_at DESC, id DESC);

-- One row per secret generation. A rotation stamps expires_at = now() + grace on the current
-- generation and inserts a new one; a generation is valid while expires_at is NULL or future.
-- The URL secret is kept only as its SHA-256; the signing key must be usable for HMAC
-- verification, so it is stored encrypted (AES-GCM, key derived from SERVICE_SECRET).
CREATE TABLE strategy_secrets (
    id                 bigserial PRIMARY KEY,
    strategy_id        uuid NOT NULL REFERENCES strategies (id) ON DELETE CASCADE,
    url_secret_sha256  bytea NOT NULL CHECK (length(url_secret_sha256) = 32),
    signing_secret_enc bytea NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz
);
CREATE UNIQUE INDEX strategy_secrets_url ON strategy_secrets (url_secret_sha256);
CREATE INDEX strategy_secrets_strategy ON strategy_secrets (strategy_id, id);

CREATE TABLE strategy_shares (
    strategy_id uuid NOT NULL REFERENCES strategies (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (strategy_id, user_id)
);
CREATE INDEX strategy_shares_user ON strategy_shares (user_id);

CREATE TABLE alerts (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    strategy_id  uuid NOT NULL REFERENCES strategies (id) ON DELETE CASCADE,
    source       text NOT NULL CHECK (source IN ('tradingview', 'signed')),
    -- Standard Webhooks message id (signed source only); unique per feed = idempotency key.
    webhook_id   text CHECK (length(webhook_id) BETWEEN 1 AND 256),
    ticker       text CHECK (length(ticker) BETWEEN 1 AND 64),
    action       text CHECK (action IN ('buy', 'sell')),
    quantity     numeric CHECK (quantity >= 0),
    price        numeric CHECK (price >= 0),
    alert_time   timestamptz,
    message      text CHECK (length(message) <= 4096),
    raw_body     text NOT NULL,
    content_type text NOT NULL CHECK (content_type IN ('application/json', 'text/plain')),
    -- SHA-256 of the raw bytes: identical TradingView retries are de-duplicated on it.
    body_sha256  bytea NOT NULL CHECK (length(body_sha256) = 32),
    received_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (strategy_id, webhook_id)
);
CREATE INDEX alerts_strategy_received ON alerts (strategy_id, received_at DESC, id DESC);
CREATE INDEX alerts_strategy_ticker_received
    ON alerts (strategy_id, ticker, received_at DESC, id DESC);
CREATE INDEX alerts_strategy_action_received
    ON alerts (strategy_id, action, received_at DESC, id DESC);
CREATE INDEX alerts_dedup ON alerts (strategy_id, body_sha256, received_at DESC);
