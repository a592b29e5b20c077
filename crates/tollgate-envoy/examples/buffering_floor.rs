//! The floor under any buffering proxy-wasm filter, for
//! `scripts/measure-envoy`: a filter that does what tollgate's filter must
//! do to a JSON chat request and its answer, and nothing else. It holds the
//! request headers until the body is in, copies the body into the VM and
//! back out (tollgate rewrites it), sets one request header, holds the
//! answer to its end, copies it into the VM and sets one answer header.
//!
//! Envoy's CPU with this filter, over Envoy's without it, is what being a
//! buffering wasm filter costs (V8 calls, stream contexts, the copies and
//! the buffering); tollgate's filter over this one is its own work
//! (parse, count, classify, route, price, record).
//!
//!   cargo build -p tollgate-envoy --example buffering_floor --target wasm32-wasip1 --release
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType};

    pub struct Root;

    impl Context for Root {}

    impl RootContext for Root {
        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Floor))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Floor;

    impl Context for Floor {}

    impl HttpContext for Floor {
        fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
            // Held until the body is in, as tollgate holds them (it sets the
            // provider's route and key from the body).
            if end_of_stream { Action::Continue } else { Action::Pause }
        }

        fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
            if !end_of_stream {
                return Action::Pause;
            }
            let body = self.get_http_request_body(0, body_size).unwrap_or_default();
            self.set_http_request_body(0, body_size, &body);
            self.set_http_request_header("x-floor", Some("1"));
            Action::Continue
        }

        fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
            if end_of_stream { Action::Continue } else { Action::Pause }
        }

        fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
            if !end_of_stream {
                return Action::Pause;
            }
            let body = self.get_http_response_body(0, body_size).unwrap_or_default();
            self.set_http_response_header("x-floor-bytes", Some(&body.len().to_string()));
            Action::Continue
        }
    }
}

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(filter::Root) });
}}

#[cfg(not(target_arch = "wasm32"))]
fn main() {}
