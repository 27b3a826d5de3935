//! SMTP protocol: a pure server state machine and a small client.
//!
//! The server side does no I/O. [`command`] parses one command line into a
//! typed [`Command`]; [`reply`] renders replies with enhanced status codes;
//! [`data`] reads a DATA body; [`session`] ties them into the server
//! [`Session`], which consumes input bytes and tells the I/O layer what to do
//! next ([`Action`]). Everything is unit-tested, and no input makes it panic.

pub mod client;
pub mod command;
pub mod data;
pub mod proxy;
pub mod reply;
pub mod sasl;
pub mod session;

pub use command::{
    BodyType, Command, CommandError, ForwardPath, MailFrom, Mailbox, Notify, Orcpt, RcptTo, Ret,
};
pub use data::{DataOutcome, DataReader};
pub use reply::{Enhanced, Reply, codes};
pub use sasl::Credentials;
pub use session::{
    Action, AuthDecision, Message, MessageOutcome, RcptDecision, Session, SessionConfig,
};
