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
//! The service is built on the `grpc_platform` crate (`platform/`): TLS,
//! the connection loop, the tower layers, authentication and the access
//! each method declares in the proto, health, the admin port, telemetry.
//! What is here is the service: a request travels from the platform's
//! layers to the handlers ([`service`]) → domain rules ([`domain`]) →
//! storage ([`store`]).
//!
//! - [`pb`]: generated protobuf/gRPC code (from `proto/`).
//! - [`sdk`]: the client SDK (`default-features = false` builds only this).
//! - [`config`]: layered settings, validation, typed accessors.
//! - [`startup`]: `Application::build` binds; `run_until_stopped` serves.
//! - [`domain`]: orders, addresses, items, the lifecycle; no I/O.
//! - [`store`]: the `Store` trait, SQLite and PostgreSQL, the change feed,
//!   and the store's metrics.
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
pub mod config;
#[cfg(feature = "server")]
pub mod domain;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod startup;
#[cfg(feature = "server")]
pub mod store;

/// The README's Rust examples, compiled by `cargo test` so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
