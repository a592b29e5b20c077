// Forwards /v1/* to env.UPSTREAM_BASE_URL + the same path and query, with
// the method, headers and body as received, and streams the answer back.
// GET /healthz answers 200 itself (wrangler dev readiness).
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/healthz") {
      return new Response("ok");
    }
    if (!url.pathname.startsWith("/v1/")) {
      return new Response("not found", { status: 404 });
    }
    const base = env.UPSTREAM_BASE_URL.replace(/\/+$/, "");
    const headers = new Headers(request.headers);
    headers.delete("host");
    return fetch(base + url.pathname + url.search, {
      method: request.method,
      headers,
      body: request.body,
    });
  },
};
