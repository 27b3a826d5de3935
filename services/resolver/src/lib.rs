//! Resolver service: MX routes and DNS behind one cache
