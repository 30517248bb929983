    CREATE TABLE orders (
        id TEXT PRIMARY KEY,
        workflow_id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        finished INTEGER NOT NULL,
        state TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX orders_unfinished ON orders (finished) WHERE finished = 0;
    CREATE INDEX orders_status_created ON orders (status, created_at);
    CREATE INDEX orders_created ON orders (created_at);
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        exchange TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        mandatory INTEGER NOT NULL,
        envelope BLOB NOT NULL,
        created_at TEXT NOT NULL
    );
