//! The orders table and the outbox: the first schema. The outbox is the kit's, laid out as this
//! file's SQL first was (its checksum is pinned in the store's tests).
pub fn migration() -> String {
    ORDERS.to_owned() + &service_kit::store::schema::first_outbox_postgres(0)
}

const ORDERS: &str = "    CREATE TABLE orders (
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
";
