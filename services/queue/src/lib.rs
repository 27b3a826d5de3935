//! Queue service: routing, scheduling, retries
