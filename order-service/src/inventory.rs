//! The simulated inventory service.
//!
//! A fixed stock table seeded like the original demo. It is a simulated
//! warehouse that does not deplete: every order is checked against the same
//! levels, so `product-5` (stock 0) always fails and the others succeed up
//! to their level per order. Reservations are named
//! `RES-<orderId>-<productId>`; releasing and confirming them are recorded
//! on the order, not here.

use std::collections::BTreeMap;

use shared_messages::messages::OrderItem;

/// Units on hand per product.
pub const STOCK: [(&str, u32); 5] = [
    ("product-1", 100),
    ("product-2", 50),
    ("product-3", 25),
    ("product-4", 75),
    ("product-5", 0),
];

pub fn stock_of(product_id: &str) -> Option<u32> {
    STOCK
        .iter()
        .find(|(p, _)| *p == product_id)
        .map(|(_, n)| *n)
}

/// Reserves every line (quantities of the same product are added up), or
/// says which product cannot be had.
pub fn reserve(order_id: &str, items: &[OrderItem]) -> Result<Vec<String>, String> {
    let mut wanted: BTreeMap<&str, u64> = BTreeMap::new();
    for item in items {
        *wanted.entry(item.product_id.as_str()).or_default() += u64::from(item.quantity);
    }
    for (product, quantity) in &wanted {
        match stock_of(product) {
            None => {
                return Err(format!(
                    "unknown product {product}: it is not in the stock table"
                ))
            }
            Some(available) if u64::from(available) < *quantity => {
                return Err(format!(
                    "insufficient stock for {product}: requested {quantity}, available {available}"
                ))
            }
            Some(_) => {}
        }
    }
    Ok(wanted
        .keys()
        .map(|product| format!("RES-{order_id}-{product}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(product: &str, quantity: u32) -> OrderItem {
        OrderItem {
            product_id: product.into(),
            product_name: "x".into(),
            quantity,
            price: 1.0,
        }
    }

    #[test]
    fn reserves_one_id_per_product() {
        let r = reserve(
            "ORD-1",
            &[
                item("product-1", 2),
                item("product-2", 1),
                item("product-1", 1),
            ],
        );
        assert_eq!(
            r,
            Ok(vec![
                "RES-ORD-1-product-1".into(),
                "RES-ORD-1-product-2".into()
            ])
        );
    }

    #[test]
    fn product_5_is_out_of_stock() {
        let err = reserve("ORD-1", &[item("product-5", 1)]).expect_err("no stock");
        assert!(err.contains("product-5"), "{err}");
    }

    #[test]
    fn quantities_above_stock_and_unknown_products_fail() {
        assert!(reserve("O", &[item("product-3", 26)]).is_err());
        assert!(reserve("O", &[item("product-3", 25)]).is_ok());
        assert!(reserve("O", &[item("product-3", 20), item("product-3", 6)]).is_err());
        let err = reserve("O", &[item("product-9", 1)]).expect_err("unknown");
        assert!(err.contains("product-9"), "{err}");
    }

    #[test]
    fn stock_does_not_deplete() {
        for _ in 0..10 {
            assert!(reserve("O", &[item("product-1", 100)]).is_ok());
        }
    }
}
