//! # orders
//!
//! A secure gRPC orders service for a supermarket, and its client SDK.
//! Customers register orders, move house while waiting and watch their orders
//! progress; staff advance them. The service speaks TLS, checks JWTs, stores
//! orders durably in SQLite or PostgreSQL, and streams every change to
//! watchers on every replica.
//!
//! # Layout
//!
//! A request travels: TLS ([`tls`]) → tower layers, auth first ([`auth`]) →
//! handlers ([`service`]) → domain rules ([`domain`]) → storage ([`store`]).
//!
//! - [`pb`]: generated protobuf/gRPC code (from `proto/`).
//! - [`sdk`]: the client SDK (`default-features = false` builds only this).
//! - [`config`]: layered settings, validation, typed accessors.
//! - [`startup`]: `Application::build` binds; `run_until_stopped` serves.
//! - [`domain`]: orders, addresses, items, the lifecycle; no I/O.
//! - [`store`]: the `Store` trait, SQLite and PostgreSQL, the change feed.
//! - [`middleware`]: the tower layers (request id, metrics, access log,
//!   load shedding, deadlines, panic guard).
//! - [`health`] and [`admin`]: probes, and the plaintext admin port with
//!   health and `GET /metrics`.
//! - [`dev`]: development certificates and tokens.
//! - [`serve`]: the HTTP/2 connection loop (age, GOAWAY, drain), with
//!   [`goaway_guard`] between TLS and h2.
//!
//! # Invariants
//!
//! - Every change of an order is one new version (`version + 1`), stored in
//!   the order's history before it is announced; watchers read versions from
//!   the history, so they never miss or repeat one.
//! - A `request_id` makes registration idempotent through a unique constraint
//!   in the database, never through check-then-insert.
//! - An order another customer owns is indistinguishable from an absent one.
#![forbid(unsafe_code)]

pub mod pb;
pub mod sdk;

#[cfg(feature = "server")]
pub mod admin;
#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod dev;
#[cfg(feature = "server")]
pub mod domain;
#[cfg(feature = "server")]
pub mod goaway_guard;
#[cfg(feature = "server")]
pub mod health;
#[cfg(feature = "server")]
pub mod log_json;
#[cfg(feature = "server")]
pub mod log_writer;
#[cfg(feature = "server")]
pub mod middleware;
#[cfg(feature = "server")]
pub mod serve;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod shutdown;
#[cfg(feature = "server")]
pub mod startup;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod telemetry;
#[cfg(feature = "server")]
pub mod tls;

/// Aborts a background task when dropped, so tasks end with their owner.
#[cfg(feature = "server")]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

#[cfg(feature = "server")]
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The README's Rust examples, compiled by `cargo test` so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
