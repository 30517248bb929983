-- A fulfillment's row is rewritten at each step. Room left on each page
-- lets most rewrites stay on their page without touching the indexes (a
-- HOT update), and lz4 compresses a state that grows past the point where
-- PostgreSQL compresses it several times faster than the default pglz. A
-- server built without lz4 keeps pglz.
ALTER TABLE fulfillments SET (fillfactor = 70);
DO $$
BEGIN
    ALTER TABLE fulfillments ALTER COLUMN state SET COMPRESSION lz4;
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'fulfillments.state keeps the default compression: %', SQLERRM;
END
$$;
