//! New order ids: `ORD-<epoch millis>-<9 uppercase alphanumerics>`, as in
//! the original demo. (The ids derived from an order id, of its workflow
//! and its fulfillment, are in [`shared_messages::ids`].)

use chrono::{DateTime, Utc};
use rand::Rng;

/// Characters of the random part of an order id.
const ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// Length of the random part: 36^9 ids per millisecond make a clash
/// vanishingly rare (and the store refuses one).
const RANDOM_LEN: usize = 9;

/// A new order id, minted at `now`.
pub fn new_order_id(now: DateTime<Utc>) -> String {
    let mut rng = rand::rng();
    let suffix: String = (0..RANDOM_LEN)
        .map(|_| char::from(ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())]))
        .collect();
    format!("ORD-{}-{suffix}", now.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_have_the_original_shape() {
        let now = Utc::now();
        let id = new_order_id(now);
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert_eq!(parts[0], "ORD");
        assert_eq!(parts[1], now.timestamp_millis().to_string());
        assert_eq!(parts[2].len(), RANDOM_LEN);
        assert!(parts[2].bytes().all(|b| ID_ALPHABET.contains(&b)), "{id}");
        assert_ne!(new_order_id(now), new_order_id(now));
    }
}
