    CREATE TABLE fulfillments (
        id         TEXT PRIMARY KEY,
        order_id   TEXT NOT NULL,
        status     TEXT NOT NULL,
        finished   BOOLEAN NOT NULL,
        state      TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX fulfillments_by_status ON fulfillments (status, created_at DESC, id);
    CREATE INDEX fulfillments_created ON fulfillments (created_at DESC, id);
    CREATE INDEX fulfillments_unfinished ON fulfillments (created_at) WHERE NOT finished;
    CREATE TABLE outbox (
        seq           BIGSERIAL PRIMARY KEY,
        exchange      TEXT NOT NULL,
        routing_key   TEXT NOT NULL,
        mandatory     BOOLEAN NOT NULL,
        envelope      BYTEA NOT NULL,
        created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
        claimed_by    TEXT,
        claimed_until TIMESTAMPTZ
    );
