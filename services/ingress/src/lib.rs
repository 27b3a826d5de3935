//! SMTP ingress service
