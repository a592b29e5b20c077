//! The one response body type used for every response.
//!
//! Each piece of a response is its own body frame: hyper writes and flushes a
//! frame as soon as it gets it, so a streaming client sees each SSE event
//! when it is produced rather than all at once at the end. A piece can also
//! be an abort, which makes hyper drop the connection mid-response (the
//! `drop_after` fault).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use crate::record::ResponseTracker;

/// One piece of a response body.
#[derive(Debug)]
pub enum Piece {
    Data(Bytes),
    /// Cut the connection here. hyper treats a body error as fatal for the
    /// connection: it closes the socket without the terminating chunk (or
    /// with fewer bytes than Content-Length), so the client sees an
    /// incomplete response.
    Abort,
}

#[derive(Debug)]
enum Source {
    /// The whole body, known up front (JSON responses, control API).
    Ready(Option<Bytes>),
    /// Pieces produced over time by a task (SSE streams).
    Channel(mpsc::Receiver<Piece>),
}

/// How long an aborting producer stays idle before the abort (see `produce`).
const ABORT_FLUSH_PAUSE: Duration = Duration::from_millis(20);

#[derive(Debug)]
pub struct MockBody {
    source: Source,
    /// Exact length to announce (Content-Length); `None` → chunked encoding.
    exact_length: Option<u64>,
    /// Set for API responses so the record learns how the response ended.
    tracker: Option<ResponseTracker>,
}

impl MockBody {
    /// A complete body sent with a Content-Length.
    pub fn full(bytes: impl Into<Bytes>) -> MockBody {
        let bytes = bytes.into();
        let exact_length = u64::try_from(bytes.len()).ok();
        MockBody { source: Source::Ready(Some(bytes)), exact_length, tracker: None }
    }

    /// The first half of `bytes`, then an abort, while announcing the full
    /// Content-Length: the client sees a truncated JSON body.
    pub fn truncated(bytes: impl Into<Bytes>) -> MockBody {
        let bytes = bytes.into();
        let exact_length = u64::try_from(bytes.len()).ok();
        let half = bytes.slice(..bytes.len() / 2);
        MockBody { source: Source::Channel(produce(vec![half], None, true)), exact_length, tracker: None }
    }

    /// A chunked body fed by a task: each event becomes its own frame, with
    /// `delay` between events, and an abort after `drop_after` events.
    pub fn event_stream(events: Vec<Bytes>, delay: Option<Duration>, drop_after: Option<usize>) -> MockBody {
        let mut events = events;
        if let Some(count) = drop_after {
            events.truncate(count);
        }
        MockBody {
            source: Source::Channel(produce(events, delay, drop_after.is_some())),
            exact_length: None,
            tracker: None,
        }
    }

    pub fn with_tracker(mut self, tracker: ResponseTracker) -> MockBody {
        self.tracker = Some(tracker);
        self
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let next = match &mut this.source {
            Source::Ready(bytes) => {
                let bytes = bytes.take();
                if bytes.is_some() {
                    // With a Content-Length, hyper stops polling as soon as
                    // it has all the bytes, so the end is noted here rather
                    // than when a final poll reports it.
                    mark_completed(&mut this.tracker);
                }
                bytes.map(Piece::Data)
            }
            Source::Channel(receiver) => match receiver.poll_recv(cx) {
                Poll::Ready(piece) => piece,
                Poll::Pending => return Poll::Pending,
            },
        };
        match next {
            Some(Piece::Data(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Some(Piece::Abort) => {
                if let Some(tracker) = this.tracker.as_mut() {
                    tracker.aborted_by_fault();
                }
                Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "mock fault: drop_after"))))
            }
            None => {
                mark_completed(&mut this.tracker);
                Poll::Ready(None)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact_length {
            Some(length) => SizeHint::with_exact(length),
            None => SizeHint::default(),
        }
    }
}

/// Feeds `pieces` (then an abort if `abort`) into a channel from a task,
/// waiting `delay` between pieces.
fn produce(pieces: Vec<Bytes>, delay: Option<Duration>, abort: bool) -> mpsc::Receiver<Piece> {
    // Capacity 1: the producer runs at most one piece ahead of the
    // connection, so `chunk_delay` timing is what the client observes, and a
    // vanished client stops the producer at its next send.
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        for (index, bytes) in pieces.into_iter().enumerate() {
            if let Some(delay) = delay.filter(|_| index > 0) {
                tokio::time::sleep(delay).await;
            }
            if sender.send(Piece::Data(bytes)).await.is_err() {
                // The body was dropped: the client went away, and the
                // body's tracker has already recorded that.
                return;
            }
        }
        if abort {
            // hyper drops whatever it still buffers when the body fails, so
            // the abort waits until the body has been idle long enough for
            // hyper to flush the pieces already sent.
            tokio::time::sleep(delay.unwrap_or_default().max(ABORT_FLUSH_PAUSE)).await;
            // If the client is already gone there is nothing left to abort.
            let _ = sender.send(Piece::Abort).await;
        }
    });
    receiver
}

fn mark_completed(tracker: &mut Option<ResponseTracker>) {
    if let Some(tracker) = tracker.as_mut() {
        tracker.completed();
    }
}
