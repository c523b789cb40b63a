-- Buyers' software requests and vendors' proposals.
CREATE TABLE requests (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title        text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    description  text NOT NULL DEFAULT '' CHECK (length(description) <= 20000),
    -- [{"name": str, "description": str, "priority": "must"|"should"|"nice"}], names unique
    requirements jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(requirements) = 'array'),
    budget       numeric(14, 2) CHECK (budget >= 0),
    currency     text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    deadline     timestamptz,
    status       text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed', 'awarded')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    version      integer NOT NULL DEFAULT 1 CHECK (version >= 1)
);
CREATE INDEX requests_owner_created ON requests (owner_id, created_at DESC, id DESC);
CREATE INDEX requests_status_created ON requests (status, created_at DESC, id DESC);
CREATE INDEX requests_created ON requests (created_at DESC, id DESC);

CREATE TABLE proposals (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    request_id   uuid NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    vendor_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    price        numeric(14, 2) NOT NULL CHECK (price >= 0),
    currency     text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    summary      text NOT NULL CHECK (length(summary) BETWEEN 1 AND 20000),
    -- [{"requirement": str, "response": str, "compliance": "full"|"partial"|"none"}]
    answers      jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(answers) = 'array'),
    status       text NOT NULL DEFAULT 'submitted'
                 CHECK (status IN ('submitted', 'shortlisted', 'rejected', 'accepted', 'withdrawn')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    version      integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    UNIQUE (request_id, vendor_id)
);
-- At most one accepted proposal per request, whatever a handler does.
CREATE UNIQUE INDEX proposals_one_accepted ON proposals (request_id) WHERE status = 'accepted';
CREATE INDEX proposals_request_created ON proposals (request_id, created_at DESC, id DESC);
CREATE INDEX proposals_vendor_created ON proposals (vendor_id, created_at DESC, id DESC);
CREATE INDEX proposals_status_created ON proposals (status, created_at DESC, id DESC);

-- The proposal state machine, enforced here too so a buggy writer cannot corrupt history:
-- submitted -> shortlisted | rejected | accepted | withdrawn; shortlisted -> rejected |
-- accepted | withdrawn; rejected, accepted and withdrawn are final.
CREATE FUNCTION proposals_check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT (
        (OLD.status = 'submitted'
            AND NEW.status IN ('shortlisted', 'rejected', 'accepted', 'withdrawn'))
        OR (OLD.status = 'shortlisted' AND NEW.status IN ('rejected', 'accepted', 'withdrawn'))
    ) THEN
        RAISE EXCEPTION 'illegal proposal transition % -> %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'proposals_transition';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER proposals_transition BEFORE UPDATE OF status ON proposals
    FOR EACH ROW EXECUTE FUNCTION proposals_check_transition();
