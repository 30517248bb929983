-- The outbox is written by the service kit's shared SQL, which records
-- when each row was stored.
ALTER TABLE outbox ADD COLUMN created_at TEXT;
