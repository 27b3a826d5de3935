//! SMTP protocol: a pure server state machine and a small client
