//! Room for each rewrite of a fulfillment's row, and the outbox's claims
//! on indexes: the kit's change, the same in both services.
pub fn migration() -> String {
    service_kit::store::schema::outbox_claims_and_room_for("fulfillments")
}
