    CREATE TABLE orders (
        id TEXT PRIMARY KEY,
        workflow_id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        finished BOOLEAN NOT NULL,
        state TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX orders_unfinished ON orders (created_at) WHERE NOT finished;
    CREATE INDEX orders_status_created ON orders (status, created_at DESC, id DESC);
    CREATE INDEX orders_created ON orders (created_at DESC, id DESC);
    CREATE TABLE outbox (
        seq BIGSERIAL PRIMARY KEY,
        exchange TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        mandatory BOOLEAN NOT NULL,
        envelope BYTEA NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        claimed_by TEXT,
        claimed_until TIMESTAMPTZ
    );
