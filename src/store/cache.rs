//! The current-order cache of the SQLite store: `get` answers from memory
//! when it can, instead of a round trip to SQLite's connection thread.
//!
//! Why it is sound only for SQLite: one process owns the file and every
//! write goes through this process's writer task, which puts each committed
//! order here before it answers its caller. With PostgreSQL, other replicas
//! write too, so that store has no cache and always reads the database.
//!
//! The race to close: a `get` that misses reads the database, then fills the
//! cache; a write may commit in between, and the late fill must not put the
//! older version back. Every write group bumps `generation` and updates the
//! cache under `fill`; a filler notes the generation before its read and
//! fills only if no write group committed since, under the same lock. Hits
//! take no lock.
//!
//! Bounded (by order count) with `quick_cache`, as the token cache is; see
//! `platform/src/auth/cache.rs` for why that crate.

use crate::domain::{Order, OrderId};
use quick_cache::sync::Cache;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub(super) struct OrderCache {
    /// Shared with the readers it answers and the change feed: a hit is a
    /// reference count, not a copy of the order.
    orders: Cache<OrderId, Arc<Order>>,
    generation: AtomicU64,
    fill: Mutex<()>,
}

/// Taken before a database read; lets the read fill the cache only if no
/// write committed meanwhile.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ticket(u64);

impl OrderCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            orders: Cache::new(capacity.max(1)),
            generation: AtomicU64::new(0),
            fill: Mutex::new(()),
        }
    }

    pub(super) fn get(&self, id: &OrderId) -> Option<Arc<Order>> {
        self.orders.get(id)
    }

    pub(super) fn ticket(&self) -> Ticket {
        Ticket(self.generation.load(Ordering::Acquire))
    }

    /// Remembers what a read found, unless a write committed since `ticket`.
    pub(super) fn fill(&self, ticket: Ticket, order: &Arc<Order>) {
        let _one = self.lock();
        if self.generation.load(Ordering::Acquire) == ticket.0 {
            self.orders.insert(order.id().clone(), order.clone());
        }
    }

    /// A write group committed these orders (their newest versions); call
    /// before answering the writers, so a caller reads its own write.
    pub(super) fn committed<'a>(&self, orders: impl IntoIterator<Item = &'a Arc<Order>>) {
        let _one = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        for order in orders {
            self.orders.insert(order.id().clone(), order.clone());
        }
    }

    /// A write group failed: what it touched may or may not be on disk (a
    /// failed COMMIT is not proof of nothing), so forget those orders.
    pub(super) fn forget<'a>(&self, ids: impl IntoIterator<Item = &'a OrderId>) {
        let _one = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        for id in ids {
            self.orders.remove(id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded state is the cache itself, which a panic cannot leave
        // half-written; carry on past poisoning.
        self.fill.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Address, CustomerId, LineItem, NewOrder, Violations};
    use chrono::Utc;

    fn order() -> Order {
        let mut v = Violations::default();
        let item = LineItem::parse("APPLE".into(), 1, 100, "items[0]", &mut v).unwrap();
        let address = Address::parse(
            "Main".into(),
            1,
            "Utrecht".into(),
            "3511 AB".into(),
            "a",
            &mut v,
        )
        .unwrap();
        Order::register(
            OrderId::generate(),
            CustomerId::new("alice").unwrap(),
            NewOrder::new(vec![item], address, None).unwrap(),
            Utc::now(),
        )
    }

    #[test]
    fn a_read_that_raced_a_write_does_not_put_the_old_version_back() {
        let cache = OrderCache::new(10);
        let v1 = Arc::new(order());
        let v2 = Arc::new(v1.advance(1, Utc::now()).unwrap());
        // A reader takes its ticket and reads v1 from the database...
        let ticket = cache.ticket();
        // ...a write of v2 commits meanwhile (and may even be evicted)...
        cache.committed([&v2]);
        cache.forget([v2.id()]);
        // ...and the late fill is refused.
        cache.fill(ticket, &v1);
        assert_eq!(cache.get(v1.id()), None);
        // A read after the write fills.
        let ticket = cache.ticket();
        cache.fill(ticket, &v2);
        assert_eq!(cache.get(v1.id()), Some(v2));
    }
}
