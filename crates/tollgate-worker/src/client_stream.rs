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

#[cfg(all(test, target_arch = "wasm32", target_os = "unknown"))]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use wasm_bindgen_test::wasm_bindgen_test;
    use worker::js_sys;

    #[wasm_bindgen_test]
    async fn chunks_reach_the_client_in_order_and_the_body_ends_when_the_writer_is_done() {
        let (writer, mut body) = channel(1_000);
        for i in 0..3u8 {
            assert!(writer.send(Ok(vec![i])).await);
        }
        drop(writer);
        let mut read = Vec::new();
        while let Some(item) = body.next().await {
            read.push(item.map_err(|e| e.to_string()));
        }
        assert_eq!(read, [Ok(vec![0]), Ok(vec![1]), Ok(vec![2])]);
    }

    #[wasm_bindgen_test]
    async fn a_reader_waiting_for_a_chunk_is_woken_by_the_next_send() {
        let (writer, mut body) = channel(1_000);
        wasm_bindgen_futures::spawn_local(async move {
            Timer::after_ms(20).await;
            writer.send(Ok(b"late".to_vec())).await;
        });
        let first = body.next().await.map(|item| item.map_err(|e| e.to_string()));
        assert_eq!(first, Some(Ok(b"late".to_vec())));
        assert_eq!(body.next().await.map(|_| ()), None, "the writer was dropped after its chunk");
    }

    #[wasm_bindgen_test]
    async fn a_client_that_left_stops_the_writer_at_its_next_send() {
        let (writer, body) = channel(1_000);
        assert!(writer.send(Ok(vec![1])).await);
        drop(body);
        assert!(writer.gone().get());
        assert!(!writer.send(Ok(vec![2])).await);
    }

    #[wasm_bindgen_test]
    async fn a_client_that_takes_nothing_counts_as_gone_after_the_stall_timeout() {
        let (writer, _body) = channel(100);
        for i in 0..QUEUE_CHUNKS {
            assert!(writer.send(Ok(vec![u8::try_from(i).unwrap_or(0)])).await, "room for {QUEUE_CHUNKS} chunks");
        }
        let start = js_sys::Date::now();
        assert!(!writer.send(Ok(vec![9])).await, "a full queue that never drains");
        let waited = js_sys::Date::now() - start;
        assert!(waited >= 95.0, "gave up after {waited} ms, before the 100 ms stall timeout");
        assert!(writer.gone().get());
    }
}
