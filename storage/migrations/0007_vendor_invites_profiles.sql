-- Vendor onboarding: a request's owner invites a vendor by e-mail; accepting the invitation
-- signs the vendor in and grants them access to that request. Profiles: a name, a company and
-- notification settings per user.

-- An invitation is stored only as the SHA-256 of its token (like magic_links); it can be
-- accepted once, before expires_at.
CREATE TABLE request_invites (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    request_id  uuid NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    email       text NOT NULL CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
    invited_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    accepted_by uuid REFERENCES users (id) ON DELETE SET NULL
);
CREATE INDEX request_invites_request ON request_invites (request_id);
CREATE INDEX request_invites_expires ON request_invites (expires_at);

-- Vendors granted access to a request (by an accepted invitation): they see it whatever its
-- status and may read its proposals:{request_id} room.
CREATE TABLE request_vendors (
    request_id  uuid NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    vendor_id   uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    invite_id   uuid REFERENCES request_invites (id) ON DELETE SET NULL,
    granted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, vendor_id)
);
CREATE INDEX request_vendors_vendor ON request_vendors (vendor_id);

ALTER TABLE users
    ADD COLUMN name text CHECK (length(name) BETWEEN 1 AND 100),
    ADD COLUMN company text CHECK (length(company) BETWEEN 1 AND 200),
    -- {"email_on_proposal": bool, "email_on_status": bool}; absent keys take their defaults
    ADD COLUMN notifications jsonb NOT NULL DEFAULT '{}'
        CHECK (jsonb_typeof(notifications) = 'object');
