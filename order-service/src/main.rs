//! The order-service binary: settings, then the service kit's start-up.

service_kit::main!(order_service);
