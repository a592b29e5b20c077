//! The host calls: proxy-wasm ABI 0.2.1 (`env.proxy_*`, as proxy-wasm 0.2.5
//! imports them) and the WASI preview1 subset Envoy implements. Semantics
//! follow Envoy's `source/extensions/common/wasm/context.cc` and
//! proxy-wasm-cpp-host where a filter could tell the difference (which maps
//! are readable when, buffer splicing, shared-data CAS, metric rules), so a
//! filter that would trap in Envoy traps here too.

use wasmtime::{Caller, Extern, Linker, Memory, Module, Result, Store, bail, format_err};

use crate::state::{
    CallResponse, ForeignCall, HeaderMap, HttpCall, LocalReply, LogLevel, Metric, MetricType, Side, StreamType,
    VmState, status,
};

type C<'a> = Caller<'a, VmState>;

const WASI: &str = "wasi_snapshot_preview1";
/// proxy-wasm `WasmResult::BrokenConnection`, what `proxy_get_status`
/// reports inside the callback of a failed callout.
pub(crate) const BROKEN_CONNECTION: u32 = 11;
const UNIMPLEMENTED: i32 = 12;
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_INVAL: i32 = 28;
const ERRNO_NOSYS: i32 = 52;

// ---------------------------------------------------------------- memory

fn memory(c: &mut C<'_>) -> Result<Memory> {
    match c.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => bail!("the filter exports no `memory`"),
    }
}

fn read(c: &mut C<'_>, ptr: i32, len: i32) -> Result<Vec<u8>> {
    let len = len as u32 as usize;
    if len == 0 {
        return Ok(Vec::new());
    }
    let mem = memory(c)?;
    let mut buf = vec![0u8; len];
    mem.read(&*c, ptr as u32 as usize, &mut buf)
        .map_err(|_| format_err!("the filter passed an out-of-bounds buffer ({:#x}, {len} bytes)", ptr as u32))?;
    Ok(buf)
}

fn read_string(c: &mut C<'_>, ptr: i32, len: i32) -> Result<String> {
    Ok(String::from_utf8_lossy(&read(c, ptr, len)?).into_owned())
}

fn write(c: &mut C<'_>, ptr: u32, data: &[u8]) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mem = memory(c)?;
    mem.write(&mut *c, ptr as usize, data)
        .map_err(|_| format_err!("the filter passed an out-of-bounds pointer ({ptr:#x}, {} bytes)", data.len()))
}

fn write_u32(c: &mut C<'_>, ptr: i32, v: u32) -> Result<()> {
    write(c, ptr as u32, &v.to_le_bytes())
}

fn write_u64(c: &mut C<'_>, ptr: i32, v: u64) -> Result<()> {
    write(c, ptr as u32, &v.to_le_bytes())
}

/// Memory for data handed to the filter comes from its own allocator, which
/// then owns it (the SDK wraps it in a `Vec`).
fn allocate(c: &mut C<'_>, size: usize) -> Result<u32> {
    let func = match c.get_export("proxy_on_memory_allocate") {
        Some(Extern::Func(f)) => f,
        _ => match c.get_export("malloc") {
            Some(Extern::Func(f)) => f,
            _ => bail!("the filter exports neither `proxy_on_memory_allocate` nor `malloc`"),
        },
    };
    let func = func.typed::<i32, i32>(&*c)?;
    let ptr = func.call(&mut *c, size as i32)?;
    if ptr == 0 {
        bail!("proxy_on_memory_allocate({size}) returned null");
    }
    Ok(ptr as u32)
}

/// proxy-wasm-cpp-host `copyToPointerSize`: nothing is allocated for empty
/// data, and (0, 0) is written back.
fn copy_out(c: &mut C<'_>, data: &[u8], ptr_ptr: i32, size_ptr: i32) -> Result<()> {
    let mut ptr = 0;
    if !data.is_empty() {
        ptr = allocate(c, data.len())?;
        write(c, ptr, data)?;
    }
    write_u32(c, ptr_ptr, ptr)?;
    write_u32(c, size_ptr, data.len() as u32)
}

// ---------------------------------------------------------------- pairs

pub(crate) fn serialize_pairs(pairs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The SDK's pairs encoding; `None` if malformed.
pub(crate) fn deserialize_pairs(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = u32_at(0)?;
    let mut sizes = Vec::with_capacity(count.min(1024));
    for i in 0..count {
        sizes.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
    }
    let mut at = 4 + count * 8;
    let mut pairs = Vec::with_capacity(sizes.len());
    for (klen, vlen) in sizes {
        let key = bytes.get(at..at + klen)?;
        at += klen + 1;
        let value = bytes.get(at..at + vlen)?;
        at += vlen + 1;
        pairs.push((String::from_utf8_lossy(key).into_owned(), value.to_vec()));
    }
    Some(pairs)
}

// ---------------------------------------------------------------- maps and buffers

/// Envoy `getConstMap`: the map a read sees, or `None` when Envoy's pointer
/// to it is null.
fn const_map(st: &VmState, map_type: i32) -> Option<HeaderMap> {
    let log_phase = st.access_log_phase;
    let stream = st.streams.get(&st.effective_context);
    let dir = |side: Side| stream.map(|s| if side == Side::Request { &s.request } else { &s.response });
    match map_type {
        0 | 2 => {
            let d = dir(if map_type == 0 { Side::Request } else { Side::Response })?;
            if log_phase || d.headers_accessible { d.headers.clone() } else { None }
        }
        1 | 3 => {
            if log_phase && map_type == 1 {
                return None;
            }
            dir(if map_type == 1 { Side::Request } else { Side::Response })?.trailers.clone()
        }
        6 => st.call_response.as_ref().map(|r| r.headers.clone()),
        7 => st.call_response.as_ref().map(|r| r.trailers.clone()),
        _ => None,
    }
}

/// Envoy `getMap`: the map a write changes, or a status.
fn with_mut_map(st: &mut VmState, map_type: i32, f: impl FnOnce(&mut HeaderMap)) -> i32 {
    let (side, trailers) = match map_type {
        0 => (Side::Request, false),
        1 => (Side::Request, true),
        2 => (Side::Response, false),
        3 => (Side::Response, true),
        _ => return status::BAD_ARGUMENT,
    };
    let Some(stream) = st.stream() else { return status::BAD_ARGUMENT };
    let d = stream.direction(side);
    let map = if trailers {
        d.trailers.as_mut()
    } else if d.headers_accessible {
        d.headers.as_mut()
    } else {
        None
    };
    match map {
        Some(map) => {
            f(map);
            if side == Side::Request && !trailers {
                stream.request_header_mutations += 1;
            }
            status::OK
        }
        None => status::BAD_ARGUMENT,
    }
}

fn get_buffer(st: &VmState, buffer_type: i32) -> Option<Vec<u8>> {
    let stream = st.streams.get(&st.effective_context);
    match buffer_type {
        0 => stream?.request.body.clone(),
        1 => stream?.response.body.clone(),
        4 => st.call_response.as_ref().map(|r| r.body.clone()),
        6 => Some(st.shared.borrow().vm_config.clone()),
        7 if st.in_configure => Some(st.shared.borrow().plugin_config.clone()),
        _ => None,
    }
}

/// Envoy `Buffer::copyFrom`: start 0 drains `size` bytes and prepends the
/// data; a start at or past the end appends; anything else is refused.
fn set_buffer(st: &mut VmState, buffer_type: i32, start: usize, size: usize, data: &[u8]) -> i32 {
    let side = match buffer_type {
        0 => Side::Request,
        1 => Side::Response,
        4 | 6 | 7 => return status::BAD_ARGUMENT,
        _ => return status::NOT_FOUND,
    };
    let Some(stream) = st.stream() else { return status::NOT_FOUND };
    let Some(body) = stream.direction(side).body.as_mut() else { return status::NOT_FOUND };
    if start == 0 {
        let drain = size.min(body.len());
        let mut new = data.to_vec();
        new.extend_from_slice(&body[drain..]);
        *body = new;
        status::OK
    } else if start >= body.len() {
        body.extend_from_slice(data);
        status::OK
    } else {
        status::BAD_ARGUMENT
    }
}

// ---------------------------------------------------------------- the linker

pub(crate) fn link(linker: &mut Linker<VmState>) -> Result<()> {
    link_proxy(linker)?;
    link_wasi(linker)
}

/// Every import of `module` this host does not provide becomes a function
/// that traps with a message naming it (instantiation would otherwise fail
/// before any test could say why).
pub(crate) fn trap_unknown_imports(
    linker: &mut Linker<VmState>,
    store: &mut Store<VmState>,
    module: &Module,
) -> Result<Vec<String>> {
    let mut unknown = Vec::new();
    for import in module.imports() {
        if linker.get(&mut *store, import.module(), import.name()).is_ok() {
            continue;
        }
        let name = format!("{}.{}", import.module(), import.name());
        let Some(ty) = import.ty().func().cloned() else {
            bail!("the filter imports `{name}`, which is not a function; this host provides functions only");
        };
        let message = format!(
            "the filter called host import `{name}`, which tollgate-envoy-harness does not implement \
             (add it to crates/tollgate-envoy-harness/src/abi.rs if Envoy provides it)"
        );
        linker.func_new(import.module(), import.name(), ty, move |_, _, _| Err(format_err!("{message}")))?;
        unknown.push(name);
    }
    Ok(unknown)
}

fn link_proxy(l: &mut Linker<VmState>) -> Result<()> {
    l.func_wrap("env", "proxy_log", |mut c: C<'_>, level: i32, ptr: i32, len: i32| -> Result<i32> {
        let message = read_string(&mut c, ptr, len)?;
        let Some(level) = LogLevel::from_abi(level) else { return Ok(status::BAD_ARGUMENT) };
        c.data().log(level, message);
        Ok(status::OK)
    })?;
    l.func_wrap("env", "proxy_get_log_level", |mut c: C<'_>, out: i32| -> Result<i32> {
        let level = c.data().shared.borrow().log_level;
        write_u32(&mut c, out, level.to_abi() as u32)?;
        Ok(status::OK)
    })?;
    l.func_wrap("env", "proxy_get_current_time_nanoseconds", |mut c: C<'_>, out: i32| -> Result<i32> {
        let now = c.data().shared.borrow().now_nanos;
        write_u64(&mut c, out, now)?;
        Ok(status::OK)
    })?;
    l.func_wrap("env", "proxy_set_tick_period_milliseconds", |c: C<'_>, period: i32| -> Result<i32> {
        c.data().shared.borrow_mut().tick_period_ms = period as u32;
        Ok(status::OK)
    })?;
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, buffer_type: i32, start: i32, max: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            let Some(buffer) = get_buffer(c.data(), buffer_type) else { return Ok(status::NOT_FOUND) };
            let start = start as u32 as usize;
            let max = max as u32 as usize;
            if start.checked_add(max).is_none() {
                return Ok(status::BAD_ARGUMENT);
            }
            // cpp-host: clamp to the end; nothing written for an empty range.
            let end = start.saturating_add(max).min(buffer.len());
            if start < end {
                copy_out(&mut c, &buffer[start..end], ptr_ptr, size_ptr)?;
            }
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, buffer_type: i32, start: i32, size: i32, ptr: i32, len: i32| -> Result<i32> {
            let data = read(&mut c, ptr, len)?;
            Ok(set_buffer(c.data_mut(), buffer_type, start as u32 as usize, size as u32 as usize, &data))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, map_type: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            // Envoy: a missing map reads as empty, with status Ok.
            let pairs = const_map(c.data(), map_type).unwrap_or_default();
            let bytes = serialize_pairs(&pairs.0);
            copy_out(&mut c, &bytes, ptr_ptr, size_ptr)?;
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, map_type: i32, ptr: i32, len: i32| -> Result<i32> {
            let bytes = read(&mut c, ptr, len)?;
            let Some(pairs) = deserialize_pairs(&bytes) else { return Ok(status::BAD_ARGUMENT) };
            Ok(with_mut_map(c.data_mut(), map_type, |m| {
                *m = HeaderMap(pairs.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect())
            }))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C<'_>, map_type: i32, kptr: i32, klen: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            let key = read_string(&mut c, kptr, klen)?;
            let Some(map) = const_map(c.data(), map_type) else {
                return Ok(if c.data().access_log_phase { status::NOT_FOUND } else { status::BAD_ARGUMENT });
            };
            let Some(value) = map.get(&key).map(<[u8]>::to_vec) else { return Ok(status::NOT_FOUND) };
            copy_out(&mut c, &value, ptr_ptr, size_ptr)?;
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: C<'_>, map_type: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| -> Result<i32> {
            let key = read_string(&mut c, kptr, klen)?;
            let value = read(&mut c, vptr, vlen)?;
            Ok(with_mut_map(c.data_mut(), map_type, |m| m.add(&key, &value)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: C<'_>, map_type: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| -> Result<i32> {
            let key = read_string(&mut c, kptr, klen)?;
            let value = read(&mut c, vptr, vlen)?;
            Ok(with_mut_map(c.data_mut(), map_type, |m| m.replace(&key, &value)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C<'_>, map_type: i32, kptr: i32, klen: i32| -> Result<i32> {
            let key = read_string(&mut c, kptr, klen)?;
            Ok(with_mut_map(c.data_mut(), map_type, |m| m.remove(&key)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, pptr: i32, plen: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            let path = read(&mut c, pptr, plen)?;
            let value = c.data().shared.borrow().properties.get(&path).cloned();
            match value {
                Some(v) => {
                    copy_out(&mut c, &v, ptr_ptr, size_ptr)?;
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C<'_>, pptr: i32, plen: i32, vptr: i32, vlen: i32| -> Result<i32> {
            let path = read(&mut c, pptr, plen)?;
            let value = read(&mut c, vptr, vlen)?;
            c.data().shared.borrow_mut().properties.insert(path, value);
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>, kptr: i32, klen: i32, ptr_ptr: i32, size_ptr: i32, cas_ptr: i32| -> Result<i32> {
            let key = read_string(&mut c, kptr, klen)?;
            let entry = c.data().shared.borrow().shared_data.get(&key).cloned();
            let Some((value, cas)) = entry else { return Ok(status::NOT_FOUND) };
            copy_out(&mut c, &value, ptr_ptr, size_ptr)?;
            write_u32(&mut c, cas_ptr, cas)?;
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C<'_>, kptr: i32, klen: i32, vptr: i32, vlen: i32, cas: i32| -> Result<i32> {
            let key = read_string(&mut c, kptr, klen)?;
            let value = read(&mut c, vptr, vlen)?;
            let cas = cas as u32;
            let mut shared = c.data().shared.borrow_mut();
            let current = shared.shared_data.get(&key).map(|(_, cas)| *cas);
            if let Some(current) = current
                && cas != 0
                && cas != current
            {
                return Ok(status::CAS_MISMATCH);
            }
            let next = shared.take_cas();
            shared.shared_data.insert(key, (value, next));
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C<'_>, nptr: i32, nlen: i32, id_ptr: i32| -> Result<i32> {
            let name = read_string(&mut c, nptr, nlen)?;
            let id = {
                let mut shared = c.data().shared.borrow_mut();
                match shared.queues.iter().position(|(n, _)| *n == name) {
                    Some(i) => i,
                    None => {
                        shared.queues.push((name, Default::default()));
                        shared.queues.len() - 1
                    }
                }
            };
            write_u32(&mut c, id_ptr, id as u32 + 1)?;
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, _vptr: i32, _vlen: i32, nptr: i32, nlen: i32, id_ptr: i32| -> Result<i32> {
            let name = read_string(&mut c, nptr, nlen)?;
            let id = c.data().shared.borrow().queues.iter().position(|(n, _)| *n == name);
            match id {
                Some(i) => {
                    write_u32(&mut c, id_ptr, i as u32 + 1)?;
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    l.func_wrap("env", "proxy_enqueue_shared_queue", |mut c: C<'_>, id: i32, ptr: i32, len: i32| -> Result<i32> {
        let value = read(&mut c, ptr, len)?;
        let mut shared = c.data().shared.borrow_mut();
        match shared.queues.get_mut((id as u32 as usize).wrapping_sub(1)) {
            Some((_, q)) => {
                q.push_back(value);
                Ok(status::OK)
            }
            None => Ok(status::NOT_FOUND),
        }
    })?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            let item = {
                let mut shared = c.data().shared.borrow_mut();
                match shared.queues.get_mut((id as u32 as usize).wrapping_sub(1)) {
                    Some((_, q)) => q.pop_front(),
                    None => return Ok(status::NOT_FOUND),
                }
            };
            match item {
                Some(v) => {
                    copy_out(&mut c, &v, ptr_ptr, size_ptr)?;
                    Ok(status::OK)
                }
                None => Ok(status::EMPTY),
            }
        },
    )?;
    l.func_wrap("env", "proxy_continue_stream", |mut c: C<'_>, stream_type: i32| -> Result<i32> {
        let st = c.data_mut();
        let kind = StreamType::from_abi(stream_type);
        match kind {
            StreamType::Upstream => return Ok(UNIMPLEMENTED),
            StreamType::Other(_) => return Ok(status::BAD_ARGUMENT),
            _ => {}
        }
        let Some(stream) = st.stream() else { return Ok(status::OK) };
        stream.continued.push(kind);
        let replied = !stream.local_replies.is_empty();
        match kind {
            StreamType::Request | StreamType::Response => {
                let side = if kind == StreamType::Request { Side::Request } else { Side::Response };
                let d = stream.direction(side);
                if d.paused && !replied {
                    d.release();
                }
                // Envoy's continueStream drops its request pointers for both
                // directions (context.cc): request headers, body and trailers
                // are gone for the filter from here on.
                stream.request.headers_accessible = false;
                stream.request.body = None;
                stream.request.trailers = None;
            }
            _ => {}
        }
        Ok(status::OK)
    })?;
    l.func_wrap("env", "proxy_close_stream", |mut c: C<'_>, stream_type: i32| -> Result<i32> {
        let kind = StreamType::from_abi(stream_type);
        if let StreamType::Other(_) = kind {
            return Ok(status::BAD_ARGUMENT);
        }
        if let Some(stream) = c.data_mut().stream() {
            stream.closed.push(kind);
        }
        Ok(status::OK)
    })?;
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C<'_>,
         code: i32,
         dptr: i32,
         dlen: i32,
         bptr: i32,
         blen: i32,
         hptr: i32,
         hlen: i32,
         grpc: i32|
         -> Result<i32> {
            let details = read_string(&mut c, dptr, dlen)?;
            let body = read(&mut c, bptr, blen)?;
            let headers = read(&mut c, hptr, hlen)?;
            let Some(headers) = deserialize_pairs(&headers) else { return Ok(status::BAD_ARGUMENT) };
            let reply = LocalReply {
                status: code as u32,
                details,
                headers: headers
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), String::from_utf8_lossy(&v).into_owned()))
                    .collect(),
                body,
                grpc_status: grpc,
            };
            let st = c.data_mut();
            match st.stream() {
                Some(stream) => stream.local_replies.push(reply),
                None => st.log(
                    LogLevel::Warn,
                    format!("[harness] send_local_response({code}) outside an HTTP stream: Envoy ignores it"),
                ),
            }
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C<'_>,
         uptr: i32,
         ulen: i32,
         hptr: i32,
         hlen: i32,
         bptr: i32,
         blen: i32,
         tptr: i32,
         tlen: i32,
         timeout: i32,
         token_ptr: i32|
         -> Result<i32> {
            let upstream = read_string(&mut c, uptr, ulen)?;
            let headers = read(&mut c, hptr, hlen)?;
            let body = read(&mut c, bptr, blen)?;
            let trailers = read(&mut c, tptr, tlen)?;
            let (Some(headers), Some(trailers)) = (deserialize_pairs(&headers), deserialize_pairs(&trailers)) else {
                return Ok(status::BAD_ARGUMENT);
            };
            let strings = |pairs: Vec<(String, Vec<u8>)>| -> Vec<(String, String)> {
                pairs.into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned())).collect()
            };
            let headers = strings(headers);
            let trailers = strings(trailers);
            let st = c.data();
            let token = {
                let mut shared = st.shared.borrow_mut();
                // Envoy: an unknown cluster or a missing :path, :method or
                // :authority is BadArgument.
                if let Some(clusters) = &shared.clusters
                    && !clusters.contains(&upstream)
                {
                    return Ok(status::BAD_ARGUMENT);
                }
                let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
                if !has(":path") || !has(":method") || !has(":authority") {
                    return Ok(status::BAD_ARGUMENT);
                }
                let token = shared.next_token;
                shared.next_token += 1;
                shared.http_calls.push(HttpCall {
                    token,
                    worker: st.worker,
                    context_id: st.effective_context,
                    upstream,
                    headers,
                    body,
                    trailers,
                    timeout_ms: timeout as u32,
                });
                token
            };
            write_u32(&mut c, token_ptr, token)?;
            Ok(status::OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: C<'_>, code_ptr: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            let (code, message) = c.data().status.clone();
            write_u32(&mut c, code_ptr, code)?;
            copy_out(&mut c, message.as_bytes(), ptr_ptr, size_ptr)?;
            Ok(status::OK)
        },
    )?;
    l.func_wrap("env", "proxy_set_effective_context", |mut c: C<'_>, id: i32| -> Result<i32> {
        let id = id as u32;
        let st = c.data_mut();
        if st.roots.contains(&id) || st.streams.contains_key(&id) {
            st.effective_context = id;
            Ok(status::OK)
        } else {
            Ok(status::BAD_ARGUMENT)
        }
    })?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: C<'_>, nptr: i32, nlen: i32, aptr: i32, alen: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            let name = read_string(&mut c, nptr, nlen)?;
            let arguments = read(&mut c, aptr, alen)?;
            let st = c.data();
            let known = name == "clear_route_cache";
            st.shared.borrow_mut().foreign_calls.push(ForeignCall {
                worker: st.worker,
                context_id: st.effective_context,
                name,
                arguments,
            });
            if !known {
                return Ok(status::NOT_FOUND);
            }
            write_u32(&mut c, ptr_ptr, 0)?;
            write_u32(&mut c, size_ptr, 0)?;
            Ok(status::OK)
        },
    )?;
    l.func_wrap("env", "proxy_done", |mut c: C<'_>| -> Result<i32> {
        let st = c.data_mut();
        let id = st.effective_context;
        if st.roots.contains(&id) {
            // Envoy: only a root context whose on_done said "not yet" may
            // say it is done now; any other is NotFound.
            let draining = st.shared.borrow().draining_roots.contains(&(st.worker, id));
            if !draining {
                return Ok(status::NOT_FOUND);
            }
            if !st.roots_done.contains(&id) {
                st.roots_done.push(id);
            }
            return Ok(status::OK);
        }
        match st.stream() {
            Some(stream) => {
                stream.done_called = true;
                Ok(status::OK)
            }
            None => Ok(status::NOT_FOUND),
        }
    })?;
    l.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, nptr: i32, nlen: i32, id_ptr: i32| -> Result<i32> {
            let name = read_string(&mut c, nptr, nlen)?;
            let kind = match kind {
                0 => MetricType::Counter,
                1 => MetricType::Gauge,
                2 => MetricType::Histogram,
                _ => return Ok(status::BAD_ARGUMENT),
            };
            let id = {
                let mut shared = c.data().shared.borrow_mut();
                // Stats are process-wide by name; every VM's id for a name
                // reaches the same stat.
                match shared.metrics.iter().position(|m| m.name == name && m.kind == kind) {
                    Some(i) => i,
                    None => {
                        shared.metrics.push(Metric { name, kind, value: 0, samples: Vec::new() });
                        shared.metrics.len() - 1
                    }
                }
            };
            write_u32(&mut c, id_ptr, id as u32 + 1)?;
            Ok(status::OK)
        },
    )?;
    l.func_wrap("env", "proxy_increment_metric", |c: C<'_>, id: i32, offset: i64| -> Result<i32> {
        let mut shared = c.data().shared.borrow_mut();
        let Some(m) = shared.metrics.get_mut((id as u32 as usize).wrapping_sub(1)) else {
            return Ok(status::NOT_FOUND);
        };
        // Envoy: counters only go up (an offset <= 0 is BadArgument),
        // gauges go both ways, histograms cannot be incremented.
        match m.kind {
            MetricType::Counter if offset > 0 => m.value = m.value.saturating_add(offset as u64),
            MetricType::Counter => return Ok(status::BAD_ARGUMENT),
            MetricType::Gauge => m.value = m.value.wrapping_add(offset as u64),
            MetricType::Histogram => return Ok(status::BAD_ARGUMENT),
        }
        Ok(status::OK)
    })?;
    l.func_wrap("env", "proxy_record_metric", |c: C<'_>, id: i32, value: i64| -> Result<i32> {
        let mut shared = c.data().shared.borrow_mut();
        let Some(m) = shared.metrics.get_mut((id as u32 as usize).wrapping_sub(1)) else {
            return Ok(status::NOT_FOUND);
        };
        let value = value as u64;
        match m.kind {
            MetricType::Counter => m.value = m.value.saturating_add(value),
            MetricType::Gauge => m.value = value,
            MetricType::Histogram => m.samples.push(value),
        }
        Ok(status::OK)
    })?;
    l.func_wrap("env", "proxy_get_metric", |mut c: C<'_>, id: i32, out: i32| -> Result<i32> {
        let value = {
            let shared = c.data().shared.borrow();
            match shared.metrics.get((id as u32 as usize).wrapping_sub(1)) {
                None => return Ok(status::NOT_FOUND),
                Some(m) if m.kind == MetricType::Histogram => return Ok(status::BAD_ARGUMENT),
                Some(m) => m.value,
            }
        };
        write_u64(&mut c, out, value)?;
        Ok(status::OK)
    })?;
    Ok(())
}

fn link_wasi(l: &mut Linker<VmState>) -> Result<()> {
    l.func_wrap(WASI, "fd_write", |mut c: C<'_>, fd: i32, iovs: i32, n: i32, written_ptr: i32| -> Result<i32> {
        let iovecs = read(&mut c, iovs, n.saturating_mul(8))?;
        let mut data = Vec::new();
        for iov in iovecs.chunks_exact(8) {
            let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
            let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
            data.extend(read(&mut c, ptr, len)?);
        }
        let level = match fd {
            1 => LogLevel::Info,
            2 => LogLevel::Error,
            _ => return Ok(ERRNO_BADF),
        };
        let text = String::from_utf8_lossy(&data);
        for line in text.lines().filter(|l| !l.is_empty()) {
            c.data().log(level, format!("[fd {fd}] {line}"));
        }
        write_u32(&mut c, written_ptr, data.len() as u32)?;
        Ok(ERRNO_SUCCESS)
    })?;
    for name in ["fd_read", "fd_pread", "fd_pwrite"] {
        l.func_wrap(WASI, name, |_: C<'_>, _: i32, _: i32, _: i32, _: i32| -> Result<i32> { Ok(ERRNO_BADF) })?;
    }
    l.func_wrap(WASI, "fd_close", |_: C<'_>, _: i32| -> Result<i32> { Ok(ERRNO_BADF) })?;
    l.func_wrap(WASI, "fd_seek", |_: C<'_>, _: i32, _: i64, _: i32, _: i32| -> Result<i32> { Ok(ERRNO_BADF) })?;
    l.func_wrap(WASI, "fd_fdstat_get", |mut c: C<'_>, fd: i32, out: i32| -> Result<i32> {
        if !(0..=2).contains(&fd) {
            return Ok(ERRNO_BADF);
        }
        // filetype character_device, no flags, no rights restrictions.
        let mut stat = [0u8; 24];
        stat[0] = 2;
        write(&mut c, out as u32, &stat)?;
        Ok(ERRNO_SUCCESS)
    })?;
    l.func_wrap(WASI, "fd_fdstat_set_flags", |_: C<'_>, _: i32, _: i32| -> Result<i32> { Ok(ERRNO_BADF) })?;
    l.func_wrap(WASI, "fd_prestat_get", |_: C<'_>, _: i32, _: i32| -> Result<i32> { Ok(ERRNO_BADF) })?;
    l.func_wrap(WASI, "fd_prestat_dir_name", |_: C<'_>, _: i32, _: i32, _: i32| -> Result<i32> { Ok(ERRNO_BADF) })?;
    l.func_wrap(WASI, "environ_sizes_get", |mut c: C<'_>, count_ptr: i32, size_ptr: i32| -> Result<i32> {
        let (count, size) = {
            let shared = c.data().shared.borrow();
            (shared.env.len(), shared.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>())
        };
        write_u32(&mut c, count_ptr, count as u32)?;
        write_u32(&mut c, size_ptr, size as u32)?;
        Ok(ERRNO_SUCCESS)
    })?;
    l.func_wrap(WASI, "environ_get", |mut c: C<'_>, environ: i32, buf: i32| -> Result<i32> {
        let env = c.data().shared.borrow().env.clone();
        let mut at = buf as u32;
        for (i, (k, v)) in env.iter().enumerate() {
            write_u32(&mut c, environ + 4 * i as i32, at)?;
            let entry = format!("{k}={v}\0");
            write(&mut c, at, entry.as_bytes())?;
            at += entry.len() as u32;
        }
        Ok(ERRNO_SUCCESS)
    })?;
    l.func_wrap(WASI, "args_sizes_get", |mut c: C<'_>, count_ptr: i32, size_ptr: i32| -> Result<i32> {
        write_u32(&mut c, count_ptr, 0)?;
        write_u32(&mut c, size_ptr, 0)?;
        Ok(ERRNO_SUCCESS)
    })?;
    l.func_wrap(WASI, "args_get", |_: C<'_>, _: i32, _: i32| -> Result<i32> { Ok(ERRNO_SUCCESS) })?;
    l.func_wrap(WASI, "clock_time_get", |mut c: C<'_>, id: i32, _precision: i64, out: i32| -> Result<i32> {
        let now = {
            let shared = c.data().shared.borrow();
            match id {
                0 => shared.now_nanos,
                1..=3 => shared.monotonic_nanos,
                _ => return Ok(ERRNO_INVAL),
            }
        };
        write_u64(&mut c, out, now)?;
        Ok(ERRNO_SUCCESS)
    })?;
    l.func_wrap(WASI, "clock_res_get", |mut c: C<'_>, _id: i32, out: i32| -> Result<i32> {
        write_u64(&mut c, out, 1)?;
        Ok(ERRNO_SUCCESS)
    })?;
    l.func_wrap(WASI, "random_get", |mut c: C<'_>, buf: i32, len: i32| -> Result<i32> {
        let mut bytes = vec![0u8; len as u32 as usize];
        c.data().shared.borrow_mut().random_bytes(&mut bytes);
        write(&mut c, buf as u32, &bytes)?;
        Ok(ERRNO_SUCCESS)
    })?;
    l.func_wrap(WASI, "proc_exit", |mut c: C<'_>, code: i32| -> Result<()> {
        c.data_mut().exit_code = Some(code);
        bail!("the filter called proc_exit({code})")
    })?;
    l.func_wrap(WASI, "sched_yield", |_: C<'_>| -> Result<i32> { Ok(ERRNO_SUCCESS) })?;
    l.func_wrap(WASI, "poll_oneoff", |_: C<'_>, _: i32, _: i32, _: i32, _: i32| -> Result<i32> { Ok(ERRNO_NOSYS) })?;
    Ok(())
}

/// The response a test gives to a callout, as the filter will read it.
pub(crate) fn call_response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> CallResponse {
    let mut map = HeaderMap::default();
    map.add(":status", status.to_string().as_bytes());
    for (k, v) in headers {
        map.add(k, v.as_bytes());
    }
    CallResponse { headers: map, body: body.to_vec(), trailers: HeaderMap::default() }
}
