//! The fulfillment-service binary: settings, then the service kit's start-up.

service_kit::main!(fulfillment_service);
