/**
 * The metrics endpoint: `GET /metrics` in the Prometheus text format and
 * `GET /healthz` (200 while accepting, 503 while draining), on `Deno.serve`.
 *
 * @example
 * ```ts
 * import { serveMetrics } from "./metrics.ts";
 * import { TunnelStats } from "../tunnel/stats.ts";
 * const stats = new TunnelStats();
 * const endpoint = serveMetrics({ host: "127.0.0.1", port: 9100 }, {
 *   sources: () => [{ stats, labels: { role: "server" } }],
 *   healthy: () => true,
 * });
 * await endpoint.shutdown();
 * ```
 * @module
 */

import type { Logger } from "../base/log.ts";
import { type MetricsSource, renderMetrics } from "./prometheus.ts";
import { formatHostPort, type HostPort } from "../protocol/hostport.ts";

/** The Prometheus text exposition content type. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** What the endpoint reports. */
export interface MetricsProvider {
  sources(): MetricsSource[];
  /** False while draining: /healthz answers 503. */
  healthy(): boolean;
}

/** A running metrics endpoint. */
export interface MetricsEndpoint {
  addr: Deno.NetAddr;
  shutdown(): Promise<void>;
}

/** Serves /metrics and /healthz on `listen`; logs `metrics on http://…`. */
export function serveMetrics(
  listen: HostPort,
  provider: MetricsProvider,
  logger?: Logger,
): MetricsEndpoint {
  const server = Deno.serve({
    hostname: listen.host,
    port: listen.port,
    onListen: () => {},
  }, (request) => {
    const { pathname } = new URL(request.url);
    if (request.method !== "GET" && request.method !== "HEAD") {
      return new Response("method not allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
    }
    if (pathname === "/metrics") {
      return new Response(renderMetrics(provider.sources()), {
        headers: { "content-type": METRICS_CONTENT_TYPE },
      });
    }
    if (pathname === "/healthz") {
      const healthy = provider.healthy();
      return new Response(healthy ? "ok\n" : "draining\n", { status: healthy ? 200 : 503 });
    }
    return new Response("not found\n", { status: 404 });
  });
  const addr = server.addr as Deno.NetAddr;
  logger?.info(
    `metrics on http://${formatHostPort({ host: addr.hostname, port: addr.port })}/metrics`,
  );
  return { addr, shutdown: () => server.shutdown() };
}
