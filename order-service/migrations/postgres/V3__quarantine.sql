    CREATE TABLE quarantine (
            entity_id TEXT PRIMARY KEY,
            reason TEXT NOT NULL,
            quarantined_at TEXT NOT NULL
        );
