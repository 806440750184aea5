//! The hedgewitch daemon: configuration, the sans-IO protocol core, the store, and the
//! runtime that connects them to sockets and the control channel.

pub mod accounts;
pub mod banlist;
pub mod config;
pub mod conn_limits;
pub mod control;
pub mod dns;
pub mod doctor;
pub mod event;
pub mod relay;
pub mod runtime;
pub mod setup;
pub mod store;
pub mod tls;
pub mod transport;
pub mod turn_listener;
pub mod web;

/// The protocol core (registrar, proxy, calls, dial plan), without I/O.
pub use hedgewitch_core as core;
pub use hedgewitch_core::plan;
/// The protocol crate, for tools and tests built on the server.
pub use sip;
pub mod mmsg;
pub mod phone_admin;
pub mod providers;
