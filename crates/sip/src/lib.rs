//! The SIP protocol for hedgewitch, without I/O: messages, URIs, digest authentication, the
//! RFC 3261 transaction state machines, SDP for the media relay and STUN Binding. Nothing here touches a socket, a clock or a thread:
//! callers pass bytes and the current time in and carry the returned actions out.

pub mod build;
pub mod digest;
pub mod digest_client;
pub mod grammar;
pub mod header;
pub mod message;
pub mod sdp;
pub mod stun;
pub mod transaction;
pub mod turn;
pub mod uri;

pub use bytes::Bytes;
