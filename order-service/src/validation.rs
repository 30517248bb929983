//! The checks on what customers send, and the demo order.

use serde::Deserialize;
use shared_messages::messages::{Address, OrderItem, Validate};

use crate::workflow::{check_email, OrderDetails, MAX_FIELD};

/// Most lines in one order.
const MAX_ITEMS: usize = 200;

/// The body of `POST /orders`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateOrder {
    pub customer_id: String,
    #[schema(format = "email")]
    pub customer_email: String,
    pub customer_name: String,
    /// At least one line.
    pub items: Vec<OrderItem>,
    pub shipping_address: Address,
    /// `declined_card` always declines.
    #[schema(example = "credit_card")]
    pub payment_method: String,
}

impl CreateOrder {
    /// Checks every field; the error names the first wrong one.
    pub fn validate(self) -> Result<OrderDetails, String> {
        not_empty("customerId", &self.customer_id)?;
        check_email(&self.customer_email)?;
        not_empty("customerName", &self.customer_name)?;
        not_empty("paymentMethod", &self.payment_method)?;
        if self.items.is_empty() {
            return Err("items must contain at least one item".into());
        }
        if self.items.len() > MAX_ITEMS {
            return Err(format!("items must not have more than {MAX_ITEMS} lines"));
        }
        for (i, item) in self.items.iter().enumerate() {
            not_empty(&format!("items[{i}].productId"), &item.product_id)?;
            not_empty(&format!("items[{i}].productName"), &item.product_name)?;
            if item.quantity == 0 {
                return Err(format!("items[{i}].quantity must be at least 1"));
            }
            if !item.price.is_finite() || item.price < 0.0 {
                return Err(format!("items[{i}].price must not be negative"));
            }
        }
        let a = &self.shipping_address;
        for (name, value) in [
            ("street", &a.street),
            ("city", &a.city),
            ("state", &a.state),
            ("zipCode", &a.zip_code),
            ("country", &a.country),
        ] {
            if value.len() > MAX_FIELD {
                return Err(format!(
                    "shippingAddress.{name} is longer than {MAX_FIELD} characters"
                ));
            }
        }
        a.validate().map_err(|e| format!("shippingAddress: {e}"))?;
        Ok(OrderDetails {
            customer_id: self.customer_id,
            customer_email: self.customer_email,
            customer_name: self.customer_name,
            items: self.items,
            shipping_address: self.shipping_address,
            payment_method: self.payment_method,
        })
    }
}

fn not_empty(field: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value.len() > MAX_FIELD {
        return Err(format!("{field} is longer than {MAX_FIELD} characters"));
    }
    Ok(())
}

/// The original demo's order.
pub fn demo_order() -> OrderDetails {
    OrderDetails {
        customer_id: "demo-customer-001".into(),
        customer_email: "demo@example.com".into(),
        customer_name: "Demo Customer".into(),
        items: vec![
            OrderItem {
                product_id: "product-1".into(),
                product_name: "Wireless Headphones".into(),
                quantity: 2,
                price: 29.99,
            },
            OrderItem {
                product_id: "product-2".into(),
                product_name: "Smart Watch".into(),
                quantity: 1,
                price: 79.99,
            },
        ],
        shipping_address: Address {
            street: "123 Main St".into(),
            city: "Anytown".into(),
            state: "CA".into(),
            zip_code: "12345".into(),
            country: "USA".into(),
        },
        payment_method: "credit_card".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> serde_json::Value {
        serde_json::json!({
            "customerId": "c1", "customerEmail": "a@b.co", "customerName": "A",
            "items": [{"productId": "product-1", "productName": "P", "quantity": 1, "price": 1.5}],
            "shippingAddress": {"street": "s", "city": "c", "state": "st", "zipCode": "z", "country": "US"},
            "paymentMethod": "credit_card"
        })
    }

    fn check(body: serde_json::Value) -> Result<OrderDetails, String> {
        serde_json::from_value::<CreateOrder>(body)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn a_good_body_passes() {
        let d = check(body()).expect("valid");
        assert_eq!(d.items.len(), 1);
        assert!(check(serde_json::to_value(demo_order_body()).expect("json")).is_ok());
    }

    fn demo_order_body() -> serde_json::Value {
        let d = demo_order();
        serde_json::json!({
            "customerId": d.customer_id, "customerEmail": d.customer_email,
            "customerName": d.customer_name, "items": d.items,
            "shippingAddress": d.shipping_address, "paymentMethod": d.payment_method
        })
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: [(&str, serde_json::Value, &str); 6] = [
            ("/items", serde_json::json!([]), "items"),
            (
                "/items/0/quantity",
                serde_json::json!(0),
                "items[0].quantity",
            ),
            ("/items/0/price", serde_json::json!(-1.0), "items[0].price"),
            (
                "/customerEmail",
                serde_json::json!("not-an-email"),
                "customerEmail",
            ),
            ("/shippingAddress/city", serde_json::json!(" "), "city"),
            ("/customerId", serde_json::json!(""), "customerId"),
        ];
        for (pointer, value, named) in cases {
            let mut b = body();
            *b.pointer_mut(pointer).expect("pointer exists") = value;
            let err = check(b).expect_err(pointer);
            assert!(err.contains(named), "{pointer}: {err}");
        }
    }
}
