    CREATE TABLE order_history (
            order_id TEXT NOT NULL,
            seq BIGINT NOT NULL,
            kind TEXT NOT NULL,
            at TEXT NOT NULL,
            message_id TEXT,
            detail TEXT NOT NULL,
            PRIMARY KEY (order_id, seq)
        );
