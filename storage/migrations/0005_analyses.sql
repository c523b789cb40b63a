-- AI analyses of a request and its proposals, streamed to the channel analysis:{id}.
CREATE TABLE analyses (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    request_id     uuid NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    -- who started it (the request's owner or an admin); per-user limits count these
    owner_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind           text NOT NULL CHECK (kind IN ('compare_proposals', 'summarize_request')),
    status         text NOT NULL DEFAULT 'queued'
                   CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    provider       text NOT NULL,
    model          text NOT NULL,
    -- the final text once finished, the latest checkpoint while running
    text           text NOT NULL DEFAULT '',
    -- number of delta events whose text is included in "text"
    seq            integer NOT NULL DEFAULT 0 CHECK (seq >= 0),
    usage          jsonb,
    stop_reason    text,
    error_code     text,
    error_message  text,
    -- the process running it; it refreshes heartbeat_at while the analysis is active
    node           text NOT NULL DEFAULT '',
    heartbeat_at   timestamptz NOT NULL DEFAULT now(),
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    first_token_at timestamptz,
    finished_at    timestamptz,
    CHECK ((status IN ('done', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
);
CREATE INDEX analyses_request_created ON analyses (request_id, created_at DESC, id DESC);
CREATE INDEX analyses_owner_active ON analyses (owner_id) WHERE status IN ('queued', 'running');
CREATE INDEX analyses_active_heartbeat ON analyses (heartbeat_at)
    WHERE status IN ('queued', 'running');
