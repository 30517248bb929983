    CREATE TABLE fulfillments (
        id         TEXT PRIMARY KEY,
        order_id   TEXT NOT NULL,
        status     TEXT NOT NULL,
        finished   INTEGER NOT NULL,
        state      TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX fulfillments_by_status ON fulfillments (status, created_at);
    CREATE INDEX fulfillments_unfinished ON fulfillments (finished);
    CREATE TABLE outbox (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        exchange    TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        mandatory   INTEGER NOT NULL,
        envelope    BLOB NOT NULL
    );
