//! Client-side health checking for balanced endpoints (gRPC's "client-side
//! health checking", gRFC A17): each endpoint's `grpc.health.v1.Health/Watch`
//! for the service the client calls decides whether the balancer sends it
//! calls.
//!
//! Why: tonic's balancer keeps every endpoint it is given. A replica that is
//! draining (readiness NOT_SERVING after SIGTERM), restarting (connection
//! refused) or cut off from its database would keep receiving its share of
//! calls, each failing and costing a retry (and, when retries run out, a
//! failed call). Watching readiness takes a replica out of rotation the
//! moment it says so, while it still serves the calls already sent to it,
//! and puts it back when it says SERVING again.
//!
//! Rules, as A17 sets them:
//! - An endpoint starts in rotation (its health is unknown yet), leaves it on
//!   NOT_SERVING, SERVICE_UNKNOWN or a failed/ended watch, and returns on
//!   SERVING. A failed watch is reopened with the client's retry backoff.
//! - A server without the health service (UNIMPLEMENTED) is never checked
//!   again and stays in rotation.
//! - When no endpoint is healthy, every endpoint is put in rotation ("panic
//!   mode", as Envoy calls it): calls then reach the servers and fail fast
//!   with their UNAVAILABLE instead of waiting for an endpoint until their
//!   deadline.
//!
//! Tonic's balancer has no hook for this, but takes endpoint changes from a
//! channel ([`Channel::balance_channel`]); this module is what feeds it. The
//! checks use a connection of their own per endpoint (tonic does not expose
//! the balancer's), which sees the same process die or drain.

use super::RetryPolicy;
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// What the balancer is told about one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// No answer yet: in rotation until the first one says otherwise.
    Unknown,
    Serving,
    /// NOT_SERVING, SERVICE_UNKNOWN, or the watch failed.
    Down,
}

enum Event<K> {
    /// Boxed: an `Endpoint` is large and health reports are many.
    Insert(K, Box<Endpoint>),
    Remove(K),
    /// A checker's report; `checker` tells a current checker from one whose
    /// endpoint was removed (and maybe added again) since.
    Health {
        key: K,
        checker: u64,
        health: Health,
    },
}

/// Feeds endpoints to a balanced [`Channel`] made by [`balanced`].
///
/// Events are few (membership and health changes) and must never wait on
/// the balancer, which takes changes only while it has calls to place: the
/// queue to the coordinator is unbounded.
pub(super) struct Members<K> {
    events: mpsc::UnboundedSender<Event<K>>,
}

impl<K> Members<K> {
    /// Adds (or replaces) an endpoint. `false` once the channel is gone.
    pub(super) fn insert(&self, key: K, endpoint: Endpoint) -> bool {
        self.events
            .send(Event::Insert(key, Box::new(endpoint)))
            .is_ok()
    }

    /// Removes an endpoint. `false` once the channel is gone.
    pub(super) fn remove(&self, key: K) -> bool {
        self.events.send(Event::Remove(key)).is_ok()
    }

    /// Resolves when the balanced channel (every clone of it) is gone.
    pub(super) async fn closed(&self) {
        self.events.closed().await
    }
}

/// A balanced channel and the handle that adds and removes its endpoints.
/// With `health_checks`, endpoints are in rotation only while they report
/// SERVING for the health name `service` (see the module docs); without,
/// every endpoint is. `service` is the name of the service the client calls
/// (its generated server's `SERVICE_NAME`): a server reports that name as
/// it reports readiness, so it follows the name the proto declares. Background
/// tasks end when the last clone of the channel is dropped.
pub(super) fn balanced<K>(
    service: &str,
    health_checks: bool,
    retry: RetryPolicy,
) -> (Channel, Members<K>)
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
{
    let (channel, changes) = Channel::balance_channel::<K>(64);
    let (events, event_rx) = mpsc::unbounded_channel();
    let coordinator = Coordinator {
        changes,
        events: events.clone(),
        service: service.into(),
        health_checks,
        retry,
        endpoints: HashMap::new(),
        in_rotation: HashSet::new(),
        next_checker: 0,
    };
    tokio::spawn(coordinator.run(event_rx));
    (channel, Members { events })
}

struct Entry {
    endpoint: Endpoint,
    health: Health,
    checker: u64,
    /// Aborted when the entry goes (or the coordinator ends).
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

struct Coordinator<K> {
    /// Tonic's balancer: what is in rotation.
    changes: mpsc::Sender<Change<K, Endpoint>>,
    /// Handed to checkers for their reports.
    events: mpsc::UnboundedSender<Event<K>>,
    /// The health name the checkers watch.
    service: Arc<str>,
    health_checks: bool,
    retry: RetryPolicy,
    endpoints: HashMap<K, Entry>,
    in_rotation: HashSet<K>,
    next_checker: u64,
}

impl<K> Coordinator<K>
where
    K: Hash + Eq + Clone + Debug + Send + Sync + 'static,
{
    async fn run(mut self, mut events: mpsc::UnboundedReceiver<Event<K>>) {
        loop {
            let event = tokio::select! {
                // The balancer (with every clone of the channel) is gone.
                _ = self.changes.closed() => return,
                event = events.recv() => match event {
                    Some(e) => e,
                    None => return,
                },
            };
            match event {
                Event::Insert(key, endpoint) => {
                    let endpoint = *endpoint;
                    self.next_checker += 1;
                    let checker = self.next_checker;
                    let task = self.health_checks.then(|| {
                        tokio::spawn(check(
                            key.clone(),
                            checker,
                            endpoint.clone(),
                            self.service.clone(),
                            self.events.clone(),
                            self.retry.clone(),
                        ))
                    });
                    // A replaced endpoint leaves rotation, so the new one is
                    // inserted afresh.
                    if self.endpoints.contains_key(&key) && self.in_rotation.remove(&key) {
                        let _ = self.changes.send(Change::Remove(key.clone())).await;
                    }
                    self.endpoints.insert(
                        key,
                        Entry {
                            endpoint,
                            health: Health::Unknown,
                            checker,
                            task,
                        },
                    );
                }
                Event::Remove(key) => {
                    self.endpoints.remove(&key);
                }
                Event::Health {
                    key,
                    checker,
                    health,
                } => match self.endpoints.get_mut(&key) {
                    Some(entry) if entry.checker == checker && entry.health != health => {
                        tracing::debug!(endpoint = ?key, ?health, "endpoint health changed");
                        entry.health = health;
                    }
                    _ => continue, // stale, or no change
                },
            }
            if !self.rebalance().await {
                return;
            }
        }
    }

    /// Puts in rotation exactly the endpoints not known to be down, or all
    /// of them when none is up. `false` once the balancer is gone.
    async fn rebalance(&mut self) -> bool {
        let mut wanted: HashSet<K> = self
            .endpoints
            .iter()
            .filter(|(_, e)| e.health != Health::Down)
            .map(|(k, _)| k.clone())
            .collect();
        if wanted.is_empty() && !self.endpoints.is_empty() {
            tracing::warn!(
                endpoints = self.endpoints.len(),
                "no endpoint is healthy; sending calls to all of them"
            );
            wanted = self.endpoints.keys().cloned().collect();
        }
        let leaving: Vec<K> = self.in_rotation.difference(&wanted).cloned().collect();
        for key in leaving {
            self.in_rotation.remove(&key);
            if self.changes.send(Change::Remove(key)).await.is_err() {
                return false;
            }
        }
        let joining: Vec<K> = wanted.difference(&self.in_rotation).cloned().collect();
        for key in joining {
            let endpoint = self.endpoints[&key].endpoint.clone();
            self.in_rotation.insert(key.clone());
            if self
                .changes
                .send(Change::Insert(key, endpoint))
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }
}

/// Watches one endpoint's health until aborted, reporting every change of
/// mind; a failed or ended watch counts as down and is reopened after the
/// retry policy's backoff.
async fn check<K>(
    key: K,
    checker: u64,
    endpoint: Endpoint,
    service: Arc<str>,
    events: mpsc::UnboundedSender<Event<K>>,
    retry: RetryPolicy,
) where
    K: Clone + Send + 'static,
{
    let report = |health: Health| {
        events
            .send(Event::Health {
                key: key.clone(),
                checker,
                health,
            })
            .is_ok()
    };
    let mut client = HealthClient::new(endpoint.connect_lazy());
    let mut failures = 0u32;
    loop {
        let request = HealthCheckRequest {
            service: service.to_string(),
        };
        match client.watch(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                while let Ok(Some(HealthCheckResponse { status })) = stream.message().await {
                    failures = 0;
                    let health = if status == ServingStatus::Serving as i32 {
                        Health::Serving
                    } else {
                        Health::Down
                    };
                    if !report(health) {
                        return;
                    }
                }
            }
            Err(status) if status.code() == Code::Unimplemented => {
                // No health service there: nothing to go by, keep it in.
                let _ = report(Health::Serving);
                return;
            }
            Err(_) => {}
        }
        if !report(Health::Down) {
            return;
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(retry.backoff(failures)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A coordinator without health checkers, whose reports the test makes
    /// up; what it tells the balancer, as "+key" / "-key".
    struct Rig {
        events: mpsc::UnboundedSender<Event<&'static str>>,
        changes: mpsc::Receiver<Change<&'static str, Endpoint>>,
    }

    impl Rig {
        fn new() -> Self {
            let (changes_tx, changes) = mpsc::channel(64);
            let (events, event_rx) = mpsc::unbounded_channel();
            let coordinator = Coordinator {
                changes: changes_tx,
                events: events.clone(),
                service: "things.v1.ThingService".into(),
                health_checks: false,
                retry: RetryPolicy::default(),
                endpoints: HashMap::new(),
                in_rotation: HashSet::new(),
                next_checker: 0,
            };
            tokio::spawn(coordinator.run(event_rx));
            Self { events, changes }
        }

        fn insert(&self, key: &'static str) {
            let endpoint = Endpoint::from_static("http://127.0.0.1:1");
            self.events
                .send(Event::Insert(key, Box::new(endpoint)))
                .unwrap();
        }

        fn health(&self, key: &'static str, checker: u64, health: Health) {
            let event = Event::Health {
                key,
                checker,
                health,
            };
            self.events.send(event).unwrap();
        }

        /// The changes sent so far (waiting briefly for them), sorted per batch.
        async fn changes(&mut self) -> Vec<String> {
            let mut out = Vec::new();
            while let Ok(Some(change)) =
                tokio::time::timeout(Duration::from_millis(100), self.changes.recv()).await
            {
                out.push(match change {
                    Change::Insert(k, _) => format!("+{k}"),
                    Change::Remove(k) => format!("-{k}"),
                });
            }
            out.sort();
            out
        }
    }

    #[tokio::test]
    async fn endpoints_leave_rotation_when_down_and_all_return_when_none_is_up() {
        let mut rig = Rig::new();
        rig.insert("a"); // checker 1
        rig.insert("b"); // checker 2
        assert_eq!(
            rig.changes().await,
            ["+a", "+b"],
            "unknown health: in rotation"
        );
        rig.health("a", 1, Health::Serving);
        assert_eq!(rig.changes().await, Vec::<String>::new());
        rig.health("b", 2, Health::Down);
        assert_eq!(rig.changes().await, ["-b"]);
        rig.health("a", 1, Health::Down);
        assert_eq!(
            rig.changes().await,
            ["+b"],
            "none healthy: every endpoint gets calls (and fails fast)"
        );
        rig.health("a", 1, Health::Serving);
        assert_eq!(rig.changes().await, ["-b"]);
        rig.health("b", 2, Health::Serving);
        assert_eq!(rig.changes().await, ["+b"]);
    }

    #[tokio::test]
    async fn reports_of_a_replaced_checker_are_ignored_and_removal_is_final() {
        let mut rig = Rig::new();
        rig.insert("a"); // checker 1
        rig.insert("b"); // checker 2
        assert_eq!(rig.changes().await, ["+a", "+b"]);
        rig.insert("a"); // replaced: checker 3
        assert_eq!(rig.changes().await, ["+a", "-a"]);
        rig.health("a", 1, Health::Down); // from the old checker
        assert_eq!(rig.changes().await, Vec::<String>::new());
        rig.health("a", 3, Health::Down);
        assert_eq!(rig.changes().await, ["-a"]);
        rig.events.send(Event::Remove("b")).unwrap();
        // b gone and a down: a alone is in rotation (panic mode).
        assert_eq!(rig.changes().await, ["+a", "-b"]);
        rig.health("b", 2, Health::Serving); // b is gone: nothing happens
        assert_eq!(rig.changes().await, Vec::<String>::new());
    }
}
