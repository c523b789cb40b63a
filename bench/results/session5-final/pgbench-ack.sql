BEGIN;
INSERT INTO alerts(strategy, body) VALUES (gen_random_uuid(), '{"ticker":"BTCUSD","action":"buy","price":64123.5,"note":"pgbench floor for the webhook ack"}');
INSERT INTO outbox(channels, payload) VALUES (ARRAY['alerts:x'], '{"type":"alert","ticker":"BTCUSD","action":"buy","price":64123.5}');
COMMIT;
