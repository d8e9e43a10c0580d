//! The store's metrics on `/metrics`, read from the store at each scrape:
//! the connection pool's gauges and the writes committed.

use super::contract::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::Arc;

/// Registered with the platform's metrics by the server; reads the store
/// when scraped, so nothing has to keep the numbers up to date between
/// scrapes and two scrapes at once cannot disagree.
#[derive(Clone)]
pub struct StoreMetrics {
    store: Arc<dyn Store>,
}

impl StoreMetrics {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

impl std::fmt::Debug for StoreMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreMetrics")
    }
}

impl Collector for StoreMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pool = self.store.pool_stats();
        let connections = encoder.encode_descriptor(
            "orders_db_pool_connections",
            "Database connections by state (idle, in_use)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        encode_states(connections, &[("idle", pool.idle), ("in_use", pool.in_use)])?;
        let max = ConstGauge::new(i64::from(pool.max));
        max.encode(encoder.encode_descriptor(
            "orders_db_pool_max_connections",
            "Largest size of the database connection pool",
            None,
            max.metric_type(),
        )?)?;

        let written = self.store.write_stats();
        let transactions = ConstCounter::new(written.transactions);
        transactions.encode(encoder.encode_descriptor(
            "orders_db_write_transactions",
            "Committed write transactions (with group commit one carries many writes)",
            None,
            transactions.metric_type(),
        )?)?;
        let writes = ConstCounter::new(written.writes);
        writes.encode(encoder.encode_descriptor(
            "orders_db_writes",
            "Committed writes (registrations and order changes)",
            None,
            writes.metric_type(),
        )?)?;
        Ok(())
    }
}

/// One gauge per connection state, labelled `state`.
fn encode_states(
    mut family: prometheus_client::encoding::MetricEncoder,
    states: &[(&'static str, u32)],
) -> Result<(), std::fmt::Error> {
    for (state, count) in states {
        let labels = [("state", *state)];
        ConstGauge::new(i64::from(*count)).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}
