//! Client-side balancing over the addresses of a DNS name (a Kubernetes
//! headless Service returns one address per ready pod), re-resolved
//! periodically so pods that come and go are followed. Tonic balances calls
//! over the endpoints it is given; this feeds it the changes, through the
//! health checks of [`super::balance`] (an address that resolves is not yet
//! one that serves: a pod can linger in DNS while it drains).

use super::{ConnectionBuilder, Error, balance};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::transport::Channel;

/// A channel balanced over `host`'s addresses, kept up to date every `every`.
pub(super) fn balanced(
    builder: &ConnectionBuilder,
    host: &str,
    port: u16,
    every: Duration,
) -> Result<Channel, Error> {
    let (channel, members) = balance::balanced::<SocketAddr>(
        &builder.service,
        builder.health_checks,
        builder.retry.clone(),
    );
    let builder = builder.clone();
    let host = host.to_owned();
    // Fail now on a configuration error rather than in the background.
    builder.endpoint_for(&format!("https://{host}:{port}"), Some(&host))?;
    tokio::spawn(async move {
        let mut current: HashSet<SocketAddr> = HashSet::new();
        loop {
            match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(addrs) => {
                    let fresh: HashSet<SocketAddr> = addrs.collect();
                    for gone in current.difference(&fresh) {
                        if !members.remove(*gone) {
                            return; // the client is gone
                        }
                    }
                    for new in fresh.difference(&current) {
                        // Connect by address, verify the certificate by name.
                        let Ok(endpoint) =
                            builder.endpoint_for(&format!("https://{new}"), Some(&host))
                        else {
                            continue;
                        };
                        if !members.insert(*new, endpoint) {
                            return;
                        }
                    }
                    current = fresh;
                }
                Err(e) => {
                    tracing::warn!(%host, error = %e, "cannot resolve; keeping the last addresses")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = members.closed() => return,
            }
        }
    });
    Ok(channel)
}
