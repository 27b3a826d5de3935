//! DNS answers as the resolver receives them from its upstream: the wire
//! message hickory-proto decodes before the resolver reads its records.

use hickory_proto::op::Message;

/// No panic; a message that decodes encodes again (the resolver's cache
/// and forwarded answers rely on it), and the encoding decodes to the same
/// message.
pub fn answer(data: &[u8]) {
    let Ok(msg) = Message::from_vec(data) else {
        return;
    };
    // Some decodable messages cannot be written back (a record whose rdata
    // hickory refuses to emit); that is an error, not a panic.
    let Ok(wire) = msg.to_vec() else {
        return;
    };
    let again = Message::from_vec(&wire)
        .unwrap_or_else(|e| panic!("the re-encoded message does not decode ({e}): {wire:?}"));
    assert_eq!(again, msg, "round trip via {wire:?}");
}
