"""The transactional outbox's relay: publishes committed events in order, exactly once per
event id, so no acknowledged change is missing from a channel."""
