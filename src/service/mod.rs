//! The `orders.v1.OrderService` handlers: parse the request into domain types,
//! apply the domain rules, persist through the [`Store`], answer.
//!
//! Authorization happens twice, on purpose: the auth layer checks the token
//! and the method's scope; the handlers check ownership (a customer's order
//! is invisible to other customers, answered as NOT_FOUND).

mod convert;
mod error;
mod page_token;
mod streams;

use error::DOMAIN;
pub use error::ServiceError;

use crate::domain::{Caller, CustomerId, NewOrder, Order, OrderId, RuleError, Violations};
use crate::pb::{self, order_service_server::OrderService, order_service_server::SERVICE_NAME};
use crate::store::{Idempotency, Inserted, ListQuery, Store, StoreError};
use chrono::Utc;
use grpc_platform::auth::{AuthError, principal_of};
use grpc_platform::health::HealthState;
use grpc_platform::streams::StreamEnd;
use page_token::PageTokens;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// `page_size` 0 means this many.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Larger page sizes are clamped to this.
pub const MAX_PAGE_SIZE: u32 = 500;
/// Most address updates one `UpdateOrder` stream may carry (bounds memory).
pub const MAX_UPDATES_PER_STREAM: usize = 100;
/// Most orders one `TrackOrders` stream may follow at once.
pub const MAX_TRACKED_ORDERS: usize = 1_000;
/// How often a change is retried when another writer got there first.
const CONFLICT_RETRIES: usize = 8;

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::OrderEvent, Status>> + Send>>;

/// The service state shared by all calls.
#[derive(Clone)]
pub struct Orders {
    store: Arc<dyn Store>,
    tokens: Arc<PageTokens>,
    /// Turns true when the server has drained: open streams then end with
    /// UNAVAILABLE so their clients resume on another replica, and graceful
    /// shutdown is not held up by streams that would otherwise never end.
    stopping: watch::Receiver<bool>,
    /// Fails calls fast while the database is known to be down.
    health: HealthState,
    /// Changes to one order take turns within this process (striped by
    /// order id). With optimistic concurrency alone, concurrent changes to a
    /// hot order read the same version and only one of them can commit per
    /// write group, so under load some would run out of retries (ABORTED
    /// although the caller set no precondition). Across replicas, the
    /// version check and retries decide.
    turns: Arc<[tokio::sync::Mutex<()>]>,
}

/// Stripes of `Orders::turns`: enough that unrelated orders rarely wait.
const TURN_STRIPES: usize = 256;

impl Orders {
    pub fn new(
        store: Arc<dyn Store>,
        stopping: watch::Receiver<bool>,
        health: HealthState,
    ) -> Self {
        let tokens = Arc::new(PageTokens::new(store.cursor_key()));
        Self {
            store,
            tokens,
            stopping,
            health,
            turns: (0..TURN_STRIPES).map(|_| Default::default()).collect(),
        }
    }

    fn turn(&self, raw_id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(raw_id);
        &self.turns[(hash % TURN_STRIPES as u64) as usize]
    }

    /// UNAVAILABLE at once while the periodic check finds the database down.
    fn ensure_database(&self) -> Result<(), ServiceError> {
        if self.health.dependencies_ok() {
            Ok(())
        } else {
            Err(ServiceError::DatabaseDown)
        }
    }

    /// What ends a stream opened by `request` early: the server draining,
    /// or the connection reaching its maximum age (`grpc_platform::streams`).
    fn stream_end<T>(&self, request: &Request<T>) -> StreamEnd {
        StreamEnd::of(&self.stopping, request, DOMAIN)
    }

    /// The order, if it exists and the caller may see it; NOT_FOUND otherwise,
    /// whatever the id looks like.
    async fn visible(&self, caller: &Caller, raw_id: &str) -> Result<Arc<Order>, ServiceError> {
        let id = self.order_id(raw_id)?;
        self.visible_id(caller, &id, raw_id).await
    }

    /// The id a client sent, checked as every read checks it: UNAVAILABLE
    /// while the database is known to be down, NOT_FOUND for anything that
    /// cannot name an order.
    fn order_id(&self, raw_id: &str) -> Result<OrderId, ServiceError> {
        self.ensure_database()?;
        OrderId::parse(raw_id).ok_or_else(|| ServiceError::not_found(raw_id))
    }

    /// [`Orders::visible`] for an id already parsed from `raw_id`.
    async fn visible_id(
        &self,
        caller: &Caller,
        id: &OrderId,
        raw_id: &str,
    ) -> Result<Arc<Order>, ServiceError> {
        match self.store.get(id).await? {
            Some(order) if caller.may_see(&order) => Ok(order),
            _ => Err(ServiceError::not_found(raw_id)),
        }
    }

    /// Reads, applies `change`, commits if nobody changed the order meanwhile;
    /// otherwise re-reads and tries again (the rule then sees the new state, so
    /// a stale `expected_version` turns into ABORTED).
    ///
    /// The store's commit is the call's commit point
    /// ([`grpc_platform::middleware::commit`]): a call that ended before it changes
    /// nothing; past it, the change stands and is recorded as made.
    async fn change<F>(
        &self,
        caller: &Caller,
        raw_id: &str,
        change: F,
    ) -> Result<Order, ServiceError>
    where
        F: Fn(&Order) -> Result<Vec<Order>, RuleError>,
    {
        let _turn = self.turn(raw_id).lock().await;
        for _ in 0..CONFLICT_RETRIES {
            let current = self.visible(caller, raw_id).await?;
            let versions = change(&current).map_err(|rule| ServiceError::Rule {
                order: current.id().clone(),
                rule,
            })?;
            match self.store.commit(current.version(), &versions).await {
                Ok(()) => {
                    return Ok(versions
                        .last()
                        .cloned()
                        .unwrap_or_else(|| Order::clone(&current)));
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict.into())
    }
}

/// The scope that makes a caller staff in the domain's eyes (every order
/// visible); which methods need which scope, the proto declares.
pub const SCOPE_ADMIN: &str = "orders:admin";

/// The authenticated caller, and the domain's view of them: the token's
/// subject is the customer; staff are callers with [`SCOPE_ADMIN`].
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    let refused = |e: AuthError| e.status(SERVICE_NAME);
    let principal = principal_of(request).map_err(refused)?;
    let customer =
        CustomerId::new(principal.subject()).ok_or_else(|| refused(AuthError::Malformed))?;
    Ok(Caller::new(customer, principal.has_scope(SCOPE_ADMIN)))
}

#[tonic::async_trait]
impl OrderService for Orders {
    async fn register_order(
        &self,
        request: Request<pb::RegisterOrderRequest>,
    ) -> Result<Response<pb::RegisterOrderResponse>, Status> {
        let customer = caller(&request)?.customer_id().clone();
        let new = NewOrder::try_from(request.into_inner()).map_err(ServiceError::from)?;
        self.ensure_database()?;
        let fingerprint = new.fingerprint();
        let idempotency = new.request_id().map(|id| Idempotency {
            request_id: id.as_str(),
            fingerprint: &fingerprint,
        });
        let order = Order::register(OrderId::generate(), customer, new.clone(), Utc::now());
        let order = match self
            .store
            .insert(&order, idempotency)
            .await
            .map_err(ServiceError::from)?
        {
            Inserted::Created => order,
            Inserted::Existing {
                order: existing,
                fingerprint: stored,
            } if stored == fingerprint => *existing,
            Inserted::Existing { .. } => return Err(ServiceError::RequestIdReused.into()),
        };
        Ok(Response::new(pb::RegisterOrderResponse {
            order_id: order.id().to_string(),
            order: Some((&order).into()),
        }))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let caller = caller(&request)?;
        let order = self.visible(&caller, &request.get_ref().order_id).await?;
        Ok(Response::new((&*order).into()))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut violations = Violations::default();
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => {
                violations.add("page_size", "must not be negative");
                DEFAULT_PAGE_SIZE
            }
            n => (n as u32).min(MAX_PAGE_SIZE),
        };
        let status = match convert::status_filter(req.status) {
            Ok(s) => s,
            Err(v) => {
                violations.extend(v);
                None
            }
        };
        let query = page_token::Query {
            owner: caller.list_scope().map(|c| c.as_str()),
            status,
        };
        let now = Utc::now().timestamp();
        let after = if req.page_token.is_empty() {
            None
        } else {
            match self.tokens.open(&query, &req.page_token, now) {
                Ok(after) => Some(after),
                Err(v) => {
                    violations.extend(v);
                    None
                }
            }
        };
        if !violations.is_empty() {
            return Err(ServiceError::Invalid(violations).into());
        }
        self.ensure_database()?;
        let mut orders = self
            .store
            .list(&ListQuery {
                customer: caller.list_scope().cloned(),
                status,
                after,
                limit: page_size + 1,
            })
            .await
            .map_err(ServiceError::from)?;
        let next_page_token = if orders.len() > page_size as usize {
            orders.truncate(page_size as usize);
            let last = orders.last().expect("a full page has a last order");
            self.tokens.issue(&query, last.id(), now)
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListOrdersResponse {
            orders: orders.iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let order = self
            .change(&caller, &req.order_id, |o| {
                Ok(vec![o.cancel(req.expected_version, Utc::now())?])
            })
            .await?;
        Ok(Response::new((&order).into()))
    }

    async fn advance_order(
        &self,
        request: Request<pb::AdvanceOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let order = self
            .change(&caller, &req.order_id, |o| {
                Ok(vec![o.advance(req.expected_version, Utc::now())?])
            })
            .await?;
        Ok(Response::new((&order).into()))
    }

    async fn update_order(
        &self,
        request: Request<Streaming<pb::UpdateOrderRequest>>,
    ) -> Result<Response<pb::UpdateOrderResponse>, Status> {
        let caller = caller(&request)?;
        let mut stream = request.into_inner();
        let mut order_id: Option<String> = None;
        let mut expected_version = 0i64;
        let mut addresses = Vec::new();
        let mut violations = Violations::default();
        let mut index = 0usize;
        // Nothing is applied until the client half-closes: a stream that fails
        // or is cancelled part-way ends here with an error and changes nothing.
        while let Some(msg) = stream.message().await? {
            if index >= MAX_UPDATES_PER_STREAM {
                return Err(ServiceError::Exhausted(
                    "too many updates in one stream (at most 100)",
                )
                .into());
            }
            match &order_id {
                None => order_id = Some(msg.order_id.clone()),
                Some(first) if *first != msg.order_id => violations.add(
                    "order_id",
                    format!("message {index} names another order than the first message"),
                ),
                Some(_) => {}
            }
            match (expected_version, msg.expected_version) {
                (_, 0) => {}
                (0, v) => expected_version = v,
                (first, v) if first != v => violations.add(
                    "expected_version",
                    format!("message {index} expects another version than an earlier message"),
                ),
                _ => {}
            }
            let mut mine = Violations::default();
            if let Some(address) = convert::parse_address(msg.address, "address", &mut mine) {
                addresses.push(address);
            }
            for v in mine.iter() {
                violations.add(
                    v.field.clone(),
                    format!("message {index}: {}", v.description),
                );
            }
            index += 1;
        }
        let Some(order_id) = order_id else {
            let mut v = Violations::default();
            v.add("order_id", "the stream carried no updates");
            return Err(ServiceError::Invalid(v).into());
        };
        if !violations.is_empty() {
            return Err(ServiceError::Invalid(violations).into());
        }
        let applied = addresses.len() as i32;
        let order = self
            .change(&caller, &order_id, |o| {
                o.relocate_all(expected_version, addresses.clone(), Utc::now())
            })
            .await?;
        Ok(Response::new(pb::UpdateOrderResponse {
            order: Some((&order).into()),
            updates_applied: applied,
        }))
    }

    type WatchOrderStream = EventStream;

    async fn watch_order(
        &self,
        request: Request<pb::WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        let caller = caller(&request)?;
        let end = self.stream_end(&request);
        let req = request.into_inner();
        let stream =
            streams::watch(self.clone(), caller, end, req.order_id, req.after_version).await?;
        Ok(Response::new(stream))
    }

    type TrackOrdersStream = EventStream;

    async fn track_orders(
        &self,
        request: Request<Streaming<pb::TrackOrdersRequest>>,
    ) -> Result<Response<Self::TrackOrdersStream>, Status> {
        let caller = caller(&request)?;
        let end = self.stream_end(&request);
        Ok(Response::new(streams::track(
            self.clone(),
            caller,
            end,
            request.into_inner(),
        )))
    }
}
