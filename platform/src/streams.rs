//! Server streams that end when they must: when the server has drained, or
//! when their connection reaches its maximum age. Either way the stream
//! ends with UNAVAILABLE (an `ErrorInfo` reason, and a `RetryInfo` of zero),
//! so its client resumes at once, on another replica or a fresh connection,
//! instead of holding the shutdown up or being cut off when the
//! connection's grace runs out.
//!
//! ```ignore
//! async fn list_things(&self, request: Request<ListThings>) -> Result<Response<Replies<Thing>>, Status> {
//!     let end = StreamEnd::of(&self.stopping, &request, SERVICE_NAME);
//!     let things = self.things.matching(request.into_inner());
//!     Ok(Response::new(respond(end, |tx| async move {
//!         for thing in things {
//!             if tx.send(Ok(thing)).await.is_err() {
//!                 break; // the client went away
//!             }
//!         }
//!         Ok(())
//!     })))
//! }
//! ```

use crate::serve::ConnectionRecycled;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Why a stream ends early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The server has drained and stops.
    ShuttingDown,
    /// The stream's connection was asked to go away at its maximum age.
    ConnectionRecycled,
}

impl Ending {
    /// The `ErrorInfo.reason` the stream ends with.
    pub fn reason(self) -> &'static str {
        match self {
            Ending::ShuttingDown => "SERVER_SHUTTING_DOWN",
            Ending::ConnectionRecycled => "CONNECTION_MAX_AGE",
        }
    }

    /// The status message the stream ends with.
    pub fn message(self) -> &'static str {
        match self {
            Ending::ShuttingDown => "server shutting down",
            Ending::ConnectionRecycled => {
                "connection reached its maximum age: resume on a new connection"
            }
        }
    }

    /// UNAVAILABLE, with `ErrorInfo { reason, domain }` and a `RetryInfo` of
    /// zero: another replica, or a new connection, takes the call at once.
    pub fn status(self, domain: &str) -> Status {
        let mut details = ErrorDetails::with_error_info(self.reason(), domain, HashMap::new());
        details.set_retry_info(Some(Duration::ZERO));
        Status::with_error_details(Code::Unavailable, self.message(), details)
    }
}

/// What ends one open stream early (see the module documentation).
#[derive(Debug)]
pub struct StreamEnd {
    stopping: watch::Receiver<bool>,
    recycled: Option<ConnectionRecycled>,
    domain: &'static str,
}

impl StreamEnd {
    /// For the stream `request` opens: `stopping` is the server's
    /// (`ServerBuilder::stopping`), and `domain` names the service in the
    /// error it ends with.
    pub fn of<T>(
        stopping: &watch::Receiver<bool>,
        request: &Request<T>,
        domain: &'static str,
    ) -> Self {
        Self {
            stopping: stopping.clone(),
            recycled: request.extensions().get::<ConnectionRecycled>().cloned(),
            domain,
        }
    }

    /// Resolves when the stream must end, saying why. A server gone
    /// altogether (its signal dropped) counts as shutting down.
    pub async fn ending(&mut self) -> Ending {
        let Self {
            stopping, recycled, ..
        } = self;
        let recycled = async {
            match recycled {
                Some(recycled) => recycled.wait().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stopping.wait_for(|stopping| *stopping) => Ending::ShuttingDown,
            () = recycled => Ending::ConnectionRecycled,
        }
    }

    /// Resolves with the status to end the stream with.
    pub async fn wait(&mut self) -> Status {
        let ending = self.ending().await;
        ending.status(self.domain)
    }
}

/// A response stream, as a handler returns it.
pub type Replies<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// How `respond`'s work sends replies: a send fails once the client has gone.
pub type Replier<T> = mpsc::Sender<Result<T, Status>>;

/// Replies buffered per stream before the work waits for the client.
const BUFFER: usize = 16;

/// The response stream that `work` feeds, run as a task of its own. The
/// stream ends when `work` is done (with its error, if it fails), or with
/// UNAVAILABLE when `end` comes first, however much work is ready to go on;
/// the task ends as soon as the client goes away.
pub fn respond<T, W>(mut end: StreamEnd, work: impl FnOnce(Replier<T>) -> W) -> Replies<T>
where
    T: Send + 'static,
    W: Future<Output = Result<(), Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(BUFFER);
    let work = work(tx.clone());
    tokio::spawn(async move {
        let ended = tokio::select! {
            biased;
            status = end.wait() => Err(status),
            () = tx.closed() => return,
            ended = work => ended,
        };
        if let Err(status) = ended {
            let _ = tx.send(Err(status)).await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn end(stopping: &watch::Receiver<bool>) -> StreamEnd {
        StreamEnd::of(stopping, &Request::new(()), "test.v1.Things")
    }

    #[tokio::test]
    async fn a_stream_ends_with_its_work_and_its_works_error() {
        let (_stop, stopping) = watch::channel(false);
        let replies: Vec<_> = respond(end(&stopping), |tx| async move {
            tx.send(Ok(1)).await.ok();
            tx.send(Ok(2)).await.ok();
            Err(Status::invalid_argument("the third is wrong"))
        })
        .collect()
        .await;
        assert_eq!(replies.len(), 3);
        assert_eq!(replies[1].as_ref().unwrap(), &2);
        assert_eq!(
            replies[2].as_ref().unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    #[tokio::test]
    async fn an_endless_stream_ends_unavailable_when_the_server_stops() {
        let (stop, stopping) = watch::channel(false);
        let mut replies = respond(end(&stopping), |tx| async move {
            tx.send(Ok("first")).await.ok();
            std::future::pending::<Result<(), Status>>().await
        });
        assert_eq!(replies.next().await.unwrap().unwrap(), "first");
        stop.send(true).unwrap();
        let status = replies.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "SERVER_SHUTTING_DOWN");
        assert_eq!(info.domain, "test.v1.Things");
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(Duration::ZERO)
        );
        assert!(replies.next().await.is_none(), "nothing after the end");
    }

    #[tokio::test]
    async fn a_dropped_signal_counts_as_shutting_down() {
        let (stop, stopping) = watch::channel(false);
        let mut end = end(&stopping);
        drop(stop);
        assert_eq!(end.ending().await, Ending::ShuttingDown);
    }

    #[test]
    fn each_ending_has_its_reason_and_message() {
        assert_eq!(Ending::ConnectionRecycled.reason(), "CONNECTION_MAX_AGE");
        let status = Ending::ConnectionRecycled.status("test.v1.Things");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("maximum age"));
    }
}
