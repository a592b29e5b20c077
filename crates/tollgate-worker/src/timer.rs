//! Timers that never panic, and waits that wake only in the request's own
//! I/O context.
//!
//! Two workerd rules shape this module:
//! - `setTimeout` throws ("Disallowed operation called within global
//!   scope") when no request's I/O context is current. `worker::Delay`
//!   unwraps that throw, so a Delay first polled from such a place panics
//!   and poisons the wasm instance. [`Timer`] calls `setTimeout` through a
//!   binding that catches the throw and then reports the timer as fired: a
//!   caller treats that as its timeout, never as a crash.
//! - Every Rust task of an isolate runs on one shared microtask queue, so a
//!   task is polled in the context of whatever woke it. A timer, fetch or
//!   storage call made from a foreign context belongs to that context: if it
//!   ends first, the call never completes and workerd cancels the request
//!   as hung. So a request's driver must only ever be woken by its own I/O
//!   (the provider's body, the ledger, KV, its own timers), never directly
//!   by a runtime callback such as a stream's cancel when a client leaves.
//!   Such callbacks set a flag ([`Gone`]); the driver reads it when its own
//!   I/O or a short [`watch`] tick wakes it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use worker::console_error;
use worker::js_sys;
use worker::wasm_bindgen::JsValue;
use worker::wasm_bindgen::prelude::{Closure, wasm_bindgen};

#[wasm_bindgen]
extern "C" {
    // With `catch`, a throw comes back as Err instead of unwinding through wasm.
    #[wasm_bindgen(catch, js_name = setTimeout)]
    fn set_timeout(handler: &js_sys::Function, millis: i32) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(catch, js_name = clearTimeout)]
    fn clear_timeout(id: &JsValue) -> Result<(), JsValue>;
}

#[derive(Default)]
struct Shared {
    fired: Cell<bool>,
    refused: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// A one-shot timer: resolves after `millis`, or at once if the runtime
/// refuses to arm it (logged).
pub struct Timer {
    millis: u64,
    shared: Rc<Shared>,
    /// The JS callback and the timer's id, once armed.
    armed: Option<(Closure<dyn FnMut()>, JsValue)>,
}

impl Timer {
    pub fn after_ms(millis: u64) -> Timer {
        Timer { millis, shared: Rc::new(Shared::default()), armed: None }
    }

    fn arm(&mut self) {
        let shared = self.shared.clone();
        let callback = Closure::<dyn FnMut()>::new(move || {
            shared.fired.set(true);
            if let Some(waker) = shared.waker.borrow_mut().take() {
                waker.wake();
            }
        });
        let millis = i32::try_from(self.millis).unwrap_or(i32::MAX);
        let function: &js_sys::Function = worker::wasm_bindgen::JsCast::unchecked_ref(callback.as_ref());
        match set_timeout(function, millis) {
            Ok(id) => self.armed = Some((callback, id)),
            Err(e) => {
                console_error!("tollgate: the runtime refused a {millis} ms timer ({e:?}); treating it as expired");
                self.shared.refused.set(true);
                self.shared.fired.set(true);
            }
        }
    }

    /// True when the runtime refused to arm it (it then resolved at once).
    pub fn was_refused(&self) -> bool {
        self.shared.refused.get()
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.shared.fired.get() {
            return Poll::Ready(());
        }
        *this.shared.waker.borrow_mut() = Some(cx.waker().clone());
        if this.armed.is_none() {
            this.arm();
            if this.shared.fired.get() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some((callback, id)) = self.armed.take() {
            if self.shared.fired.get() {
                return;
            }
            if clear_timeout(&id).is_err() {
                // Not cleared: the callback may still run, so it must outlive us.
                callback.forget();
            }
        }
    }
}

/// Set by a runtime callback (never waking anyone), read by the driver.
#[derive(Clone, Default)]
pub struct Gone(Rc<Cell<bool>>);

impl Gone {
    pub fn set(&self) {
        self.0.set(true);
    }

    pub fn get(&self) -> bool {
        self.0.get()
    }
}

/// How often a wait looks at a [`Gone`] flag when nothing else wakes it.
pub const WATCH_TICK_MS: u64 = 200;

/// Wait for `future`, but give up (None) once `gone` is set. The flag is
/// read whenever the future's own I/O wakes the task and at least every
/// [`WATCH_TICK_MS`], on a timer armed in this task's own context.
pub async fn watch<F: Future>(future: F, gone: &Gone) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut tick = Timer::after_ms(WATCH_TICK_MS);
    std::future::poll_fn(move |cx| {
        if gone.get() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(out) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if Pin::new(&mut tick).poll(cx).is_ready() {
            // The tick fired (the flag was read above): arm the next one. If
            // the runtime refuses it, the future's own I/O still wakes us.
            tick = Timer::after_ms(WATCH_TICK_MS);
            let _refused = Pin::new(&mut tick).poll(cx).is_ready();
        }
        Poll::Pending
    })
    .await
}

#[cfg(all(test, target_arch = "wasm32", target_os = "unknown"))]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn elapsed_ms(since: f64) -> f64 {
        js_sys::Date::now() - since
    }

    #[wasm_bindgen_test]
    async fn a_timer_resolves_after_its_delay() {
        let start = js_sys::Date::now();
        let mut timer = Timer::after_ms(40);
        (&mut timer).await;
        assert!(elapsed_ms(start) >= 35.0, "{}", elapsed_ms(start));
        assert!(!timer.was_refused());
    }

    #[wasm_bindgen_test]
    async fn a_timer_the_runtime_refuses_resolves_at_once_instead_of_panicking() {
        // workerd's setTimeout throws outside a request's I/O context
        // ("Disallowed operation called within global scope"): stand in for
        // it with a throwing setTimeout, then put the real one back.
        let global = js_sys::global();
        let name = JsValue::from_str("setTimeout");
        let real = js_sys::Reflect::get(&global, &name).unwrap_or(JsValue::UNDEFINED);
        let throwing =
            js_sys::Function::new_no_args("throw new Error('Disallowed operation called within global scope')");
        let swapped = js_sys::Reflect::set(&global, &name, &throwing).unwrap_or(false);
        let start = js_sys::Date::now();
        let mut timer = Timer::after_ms(60_000);
        (&mut timer).await;
        let refused = timer.was_refused();
        drop(timer);
        let restored = js_sys::Reflect::set(&global, &name, &real).unwrap_or(false);
        assert!(swapped && restored);
        assert!(refused, "the throw was not seen");
        assert!(elapsed_ms(start) < 1_000.0, "a refused timer must resolve at once");
    }

    #[wasm_bindgen_test]
    async fn a_timer_dropped_before_it_fires_is_cleared() {
        let mut timer = Timer::after_ms(10);
        assert!(futures_poll_once(&mut timer).is_pending());
        let shared = timer.shared.clone();
        drop(timer);
        Timer::after_ms(40).await;
        assert!(!shared.fired.get(), "a cleared timer's callback ran");
    }

    #[wasm_bindgen_test]
    async fn watch_gives_up_on_a_future_that_never_wakes_once_the_flag_is_set() {
        let gone = Gone::default();
        let setter = gone.clone();
        wasm_bindgen_futures::spawn_local(async move {
            Timer::after_ms(50).await;
            setter.set();
        });
        let start = js_sys::Date::now();
        let out = watch(std::future::pending::<()>(), &gone).await;
        assert_eq!(out, None);
        // Seen at the next watch tick, not the future's (it never wakes).
        assert!(elapsed_ms(start) < f64::from(u32::try_from(WATCH_TICK_MS).unwrap_or(0) * 4), "{}", elapsed_ms(start));
    }

    #[wasm_bindgen_test]
    async fn watch_returns_what_the_future_gives_while_the_flag_is_clear() {
        let gone = Gone::default();
        let out = watch(
            async {
                Timer::after_ms(20).await;
                7
            },
            &gone,
        )
        .await;
        assert_eq!(out, Some(7));
        gone.set();
        assert_eq!(watch(std::future::ready(1), &gone).await, None, "a set flag wins over a ready future");
    }

    /// Poll `future` once with a waker that does nothing.
    fn futures_poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(future).poll(&mut cx)
    }
}
