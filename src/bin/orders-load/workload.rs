//! What each call sends. Requests are built once and cloned; only what
//! must differ per call (a registration's `request_id`, an update's
//! address) is made per call.

use crate::raw;
use crate::stats::Op;
use crate::target::{Conn, Target};
use orders::pb;
use prost::bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use tonic::Status;

/// Kinds of run (`--call`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// GetOrder of one order, registered first (or `--order-id`).
    Get,
    /// RegisterOrder, a new `request_id` per call (so each is a new order).
    Register,
    /// WatchOrder fan-out: `--watchers` streams on `--watch-orders` orders,
    /// updated at `--event-rate`; measures delivery latency.
    Watch,
    /// Mostly GetOrder, with RegisterOrder, UpdateOrder and ListOrders, and
    /// `--watchers` streams following the orders (a soak).
    Mix,
}

impl Call {
    pub fn name(self) -> &'static str {
        match self {
            Call::Get => "get",
            Call::Register => "register",
            Call::Watch => "watch",
            Call::Mix => "mix",
        }
    }
}

/// In `mix`, of every 20 calls: 16 GetOrder, 2 RegisterOrder, 1 UpdateOrder
/// and 1 ListOrders. A fixed pattern rather than random draws: every run
/// makes the same calls, and the hot path needs no random numbers.
const MIX: [Op; 20] = [
    Op::Get,
    Op::Get,
    Op::Register,
    Op::Get,
    Op::Get,
    Op::Get,
    Op::Update,
    Op::Get,
    Op::Get,
    Op::Get,
    Op::Get,
    Op::Register,
    Op::Get,
    Op::Get,
    Op::Get,
    Op::List,
    Op::Get,
    Op::Get,
    Op::Get,
    Op::Get,
];

pub struct Workload {
    pub call: Call,
    /// Every call through the generated client, responses decoded.
    typed: bool,
    /// Orders the calls read and update (one for `get`).
    pool: Vec<pb::GetOrderRequest>,
    /// The same GetOrder requests, encoded.
    pool_raw: Vec<Bytes>,
    register: pb::RegisterOrderRequest,
    /// `register` encoded, without a `request_id`.
    register_raw: Bytes,
    list: pb::ListOrdersRequest,
    /// Calls sent again because they never left this client (see
    /// [`orders::sdk::never_sent`]).
    pub resent: AtomicU64,
}

/// A valid order: two items and an address.
pub fn new_order() -> pb::RegisterOrderRequest {
    pb::RegisterOrderRequest {
        items: vec![
            pb::LineItem {
                sku: "APPLE-1".into(),
                quantity: 3,
                unit_price_cents: 250,
            },
            pb::LineItem {
                sku: "MILK".into(),
                quantity: 2,
                unit_price_cents: 99,
            },
        ],
        address: Some(address(12)),
        request_id: String::new(),
    }
}

pub fn address(number: i64) -> pb::Address {
    pb::Address {
        street: "Main Street".into(),
        number,
        city: "Utrecht".into(),
        postal_code: "3511 AB".into(),
    }
}

/// Registers `n` orders and returns their ids.
pub async fn register_orders(target: &Target, n: usize) -> Result<Vec<String>, Status> {
    let mut client = target.client(0);
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let mut request = new_order();
        request.request_id = uuid::Uuid::now_v7().to_string();
        let response = client
            .register_order(target.request(request))
            .await?
            .into_inner();
        ids.push(response.order_id);
    }
    Ok(ids)
}

impl Workload {
    pub fn new(call: Call, pool: Vec<String>, typed: bool) -> Self {
        let pool: Vec<_> = pool
            .into_iter()
            .map(|order_id| pb::GetOrderRequest { order_id })
            .collect();
        Self {
            call,
            typed,
            pool_raw: pool.iter().map(raw::encode).collect(),
            pool,
            register_raw: raw::encode(&new_order()),
            register: new_order(),
            list: pb::ListOrdersRequest {
                page_size: 20,
                ..Default::default()
            },
            resent: AtomicU64::new(0),
        }
    }

    /// The `i`-th call's kind.
    pub fn op(&self, i: u64) -> Op {
        match self.call {
            Call::Get | Call::Watch => Op::Get,
            Call::Register => Op::Register,
            Call::Mix => MIX[(i % MIX.len() as u64) as usize],
        }
    }

    fn index(&self, i: u64) -> usize {
        (i % self.pool.len() as u64) as usize
    }

    fn order(&self, i: u64) -> &pb::GetOrderRequest {
        &self.pool[self.index(i)]
    }

    /// Makes the `i`-th call; the response is dropped. A call that never
    /// left this client (its connection closed first, as when the server
    /// recycles connections) is sent again, as gRPC clients do, and counted
    /// in `resent`; every other failure is the call's result.
    pub async fn call(
        &self,
        target: &Target,
        conn: &mut Conn,
        op: Op,
        i: u64,
    ) -> Result<(), Status> {
        let mut resent = 0;
        loop {
            match self.call_once(target, conn, op, i).await {
                Err(status)
                    if resent < orders::sdk::TRANSPARENT_RETRIES
                        && orders::sdk::never_sent(&status) =>
                {
                    resent += 1;
                    self.resent.fetch_add(1, Ordering::Relaxed);
                }
                result => return result,
            }
        }
    }

    async fn call_once(
        &self,
        target: &Target,
        conn: &mut Conn,
        op: Op,
        i: u64,
    ) -> Result<(), Status> {
        let client = &mut conn.typed;
        match op {
            Op::Get if !self.typed => {
                let request = target.request(self.pool_raw[self.index(i)].clone());
                raw::unary(&mut conn.raw, request, raw::GET_ORDER).await?;
            }
            Op::Get => {
                client
                    .get_order(target.request(self.order(i).clone()))
                    .await?;
            }
            Op::Register if !self.typed => {
                let id = uuid::Uuid::now_v7();
                let message = raw::with_request_id(
                    &self.register_raw,
                    id.hyphenated()
                        .encode_lower(&mut uuid::Uuid::encode_buffer()),
                );
                raw::unary(&mut conn.raw, target.request(message), raw::REGISTER_ORDER).await?;
            }
            Op::Register => {
                let mut request = self.register.clone();
                request.request_id = uuid::Uuid::now_v7().to_string();
                client.register_order(target.request(request)).await?;
            }
            Op::Update => {
                let update = pb::UpdateOrderRequest {
                    order_id: self.order(i).order_id.clone(),
                    address: Some(address(1 + (i % 1000) as i64)),
                    expected_version: 0,
                };
                client
                    .update_order(target.request(tokio_stream::once(update)))
                    .await?;
            }
            Op::List => {
                client
                    .list_orders(target.request(self.list.clone()))
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_mostly_reads() {
        let w = Workload::new(Call::Mix, vec!["a".into(), "b".into()], false);
        let count = |op| (0..200).filter(|i| w.op(*i) == op).count();
        assert_eq!(count(Op::Get), 160);
        assert_eq!(count(Op::Register), 20);
        assert_eq!(count(Op::Update), 10);
        assert_eq!(count(Op::List), 10);
        assert_eq!(w.order(3).order_id, "b");
        let get = Workload::new(Call::Get, vec!["a".into()], false);
        assert!((0..50).all(|i| get.op(i) == Op::Get));
    }
}
