-- Alerts entered by hand (POST /api/v1/alerts) and corrected by their strategy's owner
-- (PATCH /api/v1/alerts/{id}): a third source, and when the last correction happened.
ALTER TABLE alerts DROP CONSTRAINT alerts_source_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_source_check
    CHECK (source IN ('tradingview', 'signed', 'manual'));
ALTER TABLE alerts ADD COLUMN edited_at timestamptz;
