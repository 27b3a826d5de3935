//! Delivery service: outbound SMTP workers
