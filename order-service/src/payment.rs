//! The simulated payment service.
//!
//! Declines deterministically when `paymentMethod` is `"declined_card"`,
//! and otherwise at random with probability `PAYMENT_DECLINE_RATE` (0 by
//! default). The random roll is a parameter, so the decision is pure.
//! Payment ids are `PAY-<orderId>`; refunds are recorded on the order.

/// The payment method that always declines.
pub const DECLINED_CARD: &str = "declined_card";

/// Charges `amount`; `roll` is uniform in `[0, 1)`.
pub fn charge(
    order_id: &str,
    payment_method: &str,
    amount: f64,
    decline_rate: f64,
    roll: f64,
) -> Result<String, String> {
    if payment_method == DECLINED_CARD {
        return Err(format!(
            "payment declined: the card was declined (paymentMethod \"{DECLINED_CARD}\"), amount {amount:.2}"
        ));
    }
    if roll < decline_rate {
        return Err(format!(
            "payment declined by the issuer (simulated decline rate {decline_rate}), amount {amount:.2}"
        ));
    }
    Ok(format!("PAY-{order_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approves_with_a_derived_id() {
        assert_eq!(
            charge("ORD-1", "credit_card", 10.0, 0.0, 0.0),
            Ok("PAY-ORD-1".into())
        );
    }

    #[test]
    fn declined_card_always_declines() {
        let err = charge("ORD-1", DECLINED_CARD, 10.0, 0.0, 0.99).expect_err("declines");
        assert!(err.contains("declined"), "{err}");
    }

    #[test]
    fn random_rate_declines_below_the_rate() {
        assert!(charge("O", "credit_card", 1.0, 0.5, 0.49).is_err());
        assert!(charge("O", "credit_card", 1.0, 0.5, 0.5).is_ok());
        assert!(charge("O", "credit_card", 1.0, 1.0, 0.999).is_err());
    }
}
