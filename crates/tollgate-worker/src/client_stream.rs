//! The body of a streamed answer, from the request's driver to the client.
//!
//! A small bounded queue between two sides that run in different places:
//! the driver (the request's `wait_until` task) pushes chunks, and the
//! runtime pulls them for the client and, when the client disconnects,
//! cancels the stream, dropping [`ClientBody`]. That drop only sets the
//! [`Gone`] flag: it must not wake the driver, because a task runs in the
//! I/O context of whatever woke it (see `timer`), and a cancel may come from
//! no request's context at all. The driver sees the flag at its next own
//! wake-up. For the same reason a full queue is waited out on the driver's
//! own short timer rather than woken by the runtime's pull.

use crate::timer::{Gone, Timer};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Chunks queued for the client before the driver stops reading the
/// provider: the client's pace throttles the provider's.
const QUEUE_CHUNKS: usize = 8;
/// How often a driver facing a full queue looks again.
const FULL_QUEUE_RETRY_MS: u64 = 20;

type Item = std::result::Result<Vec<u8>, worker::Error>;

#[derive(Default)]
struct Queue {
    chunks: VecDeque<Item>,
    /// The driver is done: the stream ends once the queue is drained.
    finished: bool,
    /// The runtime's pull waiting for a chunk.
    reader: Option<Waker>,
}

/// A streamed answer's body: the driver's [`ClientWriter`] and the
/// [`ClientBody`] to hand to `Response::from_stream`.
///
/// A client whose queue stays full for `stall_timeout_ms` counts as gone.
pub fn channel(stall_timeout_ms: u64) -> (ClientWriter, ClientBody) {
    let queue = Rc::new(RefCell::new(Queue::default()));
    let gone = Gone::default();
    (ClientWriter { queue: queue.clone(), gone: gone.clone(), stall_timeout_ms }, ClientBody { queue, gone })
}

pub struct ClientWriter {
    queue: Rc<RefCell<Queue>>,
    gone: Gone,
    stall_timeout_ms: u64,
}

impl ClientWriter {
    /// The flag the client's leaving sets.
    pub fn gone(&self) -> &Gone {
        &self.gone
    }

    /// Queue `item` for the client, waiting while the queue is full. False
    /// once the client has gone (nothing more will be read), or has taken
    /// nothing for the stall timeout (it then counts as gone).
    pub async fn send(&self, item: Item) -> bool {
        let mut item = Some(item);
        // Timers fire late under load, never early: the real wait is at least this.
        let mut waited_ms = 0u64;
        loop {
            if self.gone.get() {
                return false;
            }
            {
                let mut queue = self.queue.borrow_mut();
                if queue.chunks.len() < QUEUE_CHUNKS {
                    if let Some(item) = item.take() {
                        queue.chunks.push_back(item);
                    }
                    if let Some(reader) = queue.reader.take() {
                        reader.wake();
                    }
                    return true;
                }
            }
            if waited_ms >= self.stall_timeout_ms {
                worker::console_warn!("tollgate: the client took nothing for {waited_ms} ms; treating it as gone");
                self.gone.set();
                return false;
            }
            let mut wait = Timer::after_ms(FULL_QUEUE_RETRY_MS);
            (&mut wait).await;
            if wait.was_refused() {
                // No timer to wait on: stop rather than spin.
                return false;
            }
            waited_ms += FULL_QUEUE_RETRY_MS;
        }
    }
}

impl Drop for ClientWriter {
    fn drop(&mut self) {
        let mut queue = self.queue.borrow_mut();
        queue.finished = true;
        if let Some(reader) = queue.reader.take() {
            reader.wake();
        }
    }
}

pub struct ClientBody {
    queue: Rc<RefCell<Queue>>,
    gone: Gone,
}

impl futures_util::Stream for ClientBody {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let mut queue = self.queue.borrow_mut();
        if let Some(item) = queue.chunks.pop_front() {
            return Poll::Ready(Some(item));
        }
        if queue.finished {
            return Poll::Ready(None);
        }
        queue.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        // The runtime cancelled the body (the client left) or finished with it.
        // Only a flag: see the module comment for why nothing is woken here.
        self.gone.set();
    }
}
