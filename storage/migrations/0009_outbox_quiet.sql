-- A writer that hands its outbox events to the leader relay in its own process (the webhook
-- group commit) sets arena.outbox_quiet for its transaction: nobody needs the wake-up, and a
-- NOTIFY costs more than the message. PostgreSQL serialises the commits of all transactions
-- that NOTIFY (a database-wide lock held through the commit's flush), and each one wakes the
-- relay for a round that only marks events already published.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('arena.outbox_quiet', true) = 'on' THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('arena_outbox', '');
    RETURN NULL;
END $$;
