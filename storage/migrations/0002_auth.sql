-- Magic links and refresh-token rotation. Secrets are never stored: a magic link is kept as the
-- SHA-256 of its token, a refresh token only by its jti (the signature makes it unforgeable).
CREATE TABLE magic_links (
    token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    email       text NOT NULL CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX magic_links_expires ON magic_links (expires_at);

-- One family per login; every refresh rotates to a new token of the same family. Presenting a
-- token that was already used revokes the family, so a stolen and a legitimate copy cannot
-- both keep working.
CREATE TABLE refresh_families (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    revoke_reason text
);
CREATE INDEX refresh_families_user ON refresh_families (user_id);

CREATE TABLE refresh_tokens (
    jti         text PRIMARY KEY CHECK (length(jti) BETWEEN 1 AND 64),
    family_id   uuid NOT NULL REFERENCES refresh_families (id) ON DELETE CASCADE,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
