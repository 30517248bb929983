//! The fulfillments table and the outbox: the first schema. The outbox is the kit's, laid out as this
//! file's SQL first was (its checksum is pinned in the store's tests).
pub fn migration() -> String {
    FULFILLMENTS.to_owned() + &service_kit::store::schema::first_outbox_postgres(13)
}

const FULFILLMENTS: &str = "    CREATE TABLE fulfillments (
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
";
