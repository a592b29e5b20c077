-- wrk script for scripts/measure-envoy: POSTs a chat body that differs on
-- every request, and prints one machine-readable result line at the end.
--
-- Environment (set by scripts/lib/measure_envoy.py):
--   TG_PATH     request path
--   TG_BODY     file holding the JSON body, with @@ID@@ where a per-request
--               id goes (thread number and request counter)
--   TG_HEADERS  file of "name: value" lines
--   TG_DELAY_MS optional: mean pause (ms) before each request on a
--               connection, drawn uniformly from 0.5x..1.5x so connections do
--               not fire in step; paces the load to about
--               connections * 1000 / TG_DELAY_MS requests per second. wrk
--               starts a request's clock after its pause, so the pause is not
--               in the latency.
--
-- The result line is
--   TGRESULT requests duration_us p50_us p90_us p99_us p999_us max_us mean_us
--            err_connect err_read err_write err_status err_timeout
-- (err_status counts answers outside 2xx/3xx).

local path = os.getenv("TG_PATH")
local body_file = os.getenv("TG_BODY")
local headers_file = os.getenv("TG_HEADERS")
local delay_ms = tonumber(os.getenv("TG_DELAY_MS") or "0") or 0

local threads = 0

function setup(thread)
  thread:set("thread_no", threads)
  threads = threads + 1
end

local prefix, suffix, headers
local counter = 0

function init(args)
  math.randomseed(os.time() + thread_no * 7919)
  local f = assert(io.open(body_file, "rb"))
  local template = f:read("*a")
  f:close()
  prefix, suffix = template:match("^(.-)@@ID@@(.*)$")
  assert(prefix, "TG_BODY has no @@ID@@")
  headers = {}
  for line in io.lines(headers_file) do
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then
      headers[name] = value
    end
  end
end

function request()
  counter = counter + 1
  return wrk.format("POST", path, headers, prefix .. thread_no .. "-" .. counter .. suffix)
end

if delay_ms > 0 then
  -- Defined only when pacing: wrk checks whether the script has delay().
  function delay()
    return math.floor(delay_ms * (0.5 + math.random()) + 0.5)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "TGRESULT %d %d %d %d %d %d %d %.1f %d %d %d %d %d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
