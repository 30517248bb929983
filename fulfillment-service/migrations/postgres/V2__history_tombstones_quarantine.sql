    CREATE TABLE history (
        workflow_id TEXT NOT NULL,
        seq         BIGINT NOT NULL,
        kind        TEXT NOT NULL,
        at          TEXT NOT NULL,
        message_id  TEXT,
        detail      TEXT NOT NULL,
        PRIMARY KEY (workflow_id, seq)
    );
    CREATE TABLE tombstones (
        id         TEXT PRIMARY KEY,
        reason     TEXT NOT NULL,
        message_id TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE quarantine (
        entity_id      TEXT PRIMARY KEY,
        reason         TEXT NOT NULL,
        quarantined_at TEXT NOT NULL
    );
