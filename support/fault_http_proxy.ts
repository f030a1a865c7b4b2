/**
 * A TCP-level HTTP/1.1 proxy for fault tests: it forwards requests byte for byte (the Host
 * header and the path untouched, so SigV4 signatures still verify upstream) and, by rules
 * the test adds, answers some requests itself (503 with `Retry-After`, 429 `SlowDown`,
 * 413 `EntityTooLarge`) or drops the connection without an answer.
 *
 * Each connection carries one request: the proxy rewrites the request's `Connection`
 * header to `close` (a header SigV4 never signs) so it can inspect every request.
 *
 * ```ts
 * const proxy = await startFaultProxy({ hostname: "127.0.0.1", port: s3.port });
 * proxy.inject({ times: 2, action: { kind: "respond", ...s3ErrorReply(503, "SlowDown", "Reduce your rate", { "retry-after": "1" }) } });
 * // point the client at proxy.endpoint
 * await proxy.close();
 * ```
 *
 * @module
 */

/** The head of a request the proxy saw. */
export interface ProxiedRequest {
  method: string;
  /** The request target as sent (percent-encoded path and query). */
  target: string;
  /** Header names in lower case. */
  headers: Record<string, string>;
  /** `Content-Length`, 0 when absent. */
  contentLength: number;
}

/** What the proxy does with a request. */
export type FaultAction =
  | {
    /** Answer without forwarding (the request body is read and discarded first). */
    kind: "respond";
    status: number;
    headers?: Record<string, string>;
    body?: string;
  }
  | {
    /** Close the connection after reading the request head: no answer at all. */
    kind: "drop";
  };

/** A fault to inject. */
export interface FaultRule {
  /** Which requests it applies to. Default: all. */
  match?: (request: ProxiedRequest) => boolean;
  /** How many requests it applies to. Default 1; `Infinity` for all. */
  times?: number;
  action: FaultAction;
}

/** What happened to one request. */
export interface ProxyLogEntry extends ProxiedRequest {
  /** `forward`, `respond <status>` or `drop`. */
  outcome: string;
}

/** A running proxy. */
export interface FaultProxy {
  /** `http://127.0.0.1:PORT`. */
  readonly endpoint: string;
  readonly port: number;
  /** Adds a rule; rules are tried in the order added. */
  inject(rule: FaultRule): void;
  /** Removes every rule. */
  clear(): void;
  /** Every request seen, in order. */
  readonly log: readonly ProxyLogEntry[];
  /** Stops listening and closes open connections. */
  close(): Promise<void>;
}

/** A `respond` action with an S3 XML error body. */
export function s3ErrorReply(
  status: number,
  code: string,
  message: string,
  headers: Record<string, string> = {},
): { status: number; headers: Record<string, string>; body: string } {
  const escape = (s: string) =>
    s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  return {
    status,
    headers: { "content-type": "application/xml", ...headers },
    body: `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${escape(code)}</Code>` +
      `<Message>${escape(message)}</Message><RequestId>fault-proxy</RequestId></Error>`,
  };
}

const ENCODER = new TextEncoder();
const DECODER = new TextDecoder();
const MAX_HEAD = 64 * 1024;

function indexOfHeadEnd(buf: Uint8Array): number {
  for (let i = 3; i < buf.length; i++) {
    if (buf[i - 3] === 13 && buf[i - 2] === 10 && buf[i - 1] === 13 && buf[i] === 10) return i + 1;
  }
  return -1;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

/** Starts a proxy to `upstream` on a free 127.0.0.1 port. */
export function startFaultProxy(
  upstream: { hostname: string; port: number },
): Promise<FaultProxy> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const rules: { rule: FaultRule; left: number }[] = [];
  const log: ProxyLogEntry[] = [];
  const open = new Set<Deno.Conn>();
  const tasks = new Set<Promise<void>>();

  function pick(request: ProxiedRequest): FaultAction | undefined {
    for (const entry of rules) {
      if (entry.left <= 0) continue;
      if (entry.rule.match && !entry.rule.match(request)) continue;
      entry.left -= 1;
      return entry.rule.action;
    }
    return undefined;
  }

  async function readHead(conn: Deno.Conn): Promise<{ head: Uint8Array; rest: Uint8Array } | null> {
    let buf: Uint8Array = new Uint8Array(0);
    const chunk = new Uint8Array(16 * 1024);
    while (buf.length <= MAX_HEAD) {
      const n = await conn.read(chunk);
      if (n === null) return null;
      buf = concat(buf, chunk.subarray(0, n));
      const end = indexOfHeadEnd(buf);
      if (end >= 0) return { head: buf.subarray(0, end), rest: buf.subarray(end) };
    }
    return null;
  }

  async function discard(conn: Deno.Conn, bytes: number): Promise<void> {
    const chunk = new Uint8Array(64 * 1024);
    let left = bytes;
    while (left > 0) {
      const n = await conn.read(chunk);
      if (n === null) return;
      left -= n;
    }
  }

  async function handle(conn: Deno.Conn): Promise<void> {
    const got = await readHead(conn);
    if (got === null) return;
    const lines = DECODER.decode(got.head).split("\r\n");
    const [method = "", target = ""] = lines[0].split(" ");
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(":");
      if (colon > 0) {
        headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
    }
    const request: ProxiedRequest = {
      method,
      target,
      headers,
      contentLength: Number(headers["content-length"] ?? "0"),
    };
    const action = pick(request);
    if (action?.kind === "drop") {
      log.push({ ...request, outcome: "drop" });
      return;
    }
    if (action?.kind === "respond") {
      log.push({ ...request, outcome: `respond ${action.status}` });
      await discard(conn, request.contentLength - got.rest.length);
      const body = ENCODER.encode(action.body ?? "");
      const head = [`HTTP/1.1 ${action.status} Fault`];
      for (const [k, v] of Object.entries(action.headers ?? {})) head.push(`${k}: ${v}`);
      head.push(`content-length: ${body.length}`, "connection: close", "", "");
      await conn.write(concat(ENCODER.encode(head.join("\r\n")), body));
      return;
    }
    log.push({ ...request, outcome: "forward" });
    const rewritten = lines
      .filter((line) => !/^connection\s*:/i.test(line) && !/^keep-alive\s*:/i.test(line))
      .join("\r\n")
      .replace(/\r\n\r\n$/, "\r\nconnection: close\r\n\r\n");
    const up = await Deno.connect(upstream);
    open.add(up);
    try {
      await up.write(concat(ENCODER.encode(rewritten), got.rest));
      const toUpstream = (async () => {
        const chunk = new Uint8Array(64 * 1024);
        let left = request.contentLength - got.rest.length;
        while (left > 0) {
          const n = await conn.read(chunk);
          if (n === null) break;
          await up.write(chunk.subarray(0, n));
          left -= n;
        }
      })();
      const chunk = new Uint8Array(64 * 1024);
      for (;;) {
        const n = await up.read(chunk);
        if (n === null) break;
        let written = 0;
        while (written < n) written += await conn.write(chunk.subarray(written, n));
      }
      await toUpstream.catch(() => {
        // The client went away mid-body; the upstream answer already ended the exchange.
      });
    } finally {
      open.delete(up);
      up.close();
    }
  }

  const accepting = (async () => {
    for await (const conn of listener) {
      open.add(conn);
      const task = handle(conn)
        .catch(() => {
          // A connection reset by either side ends only that exchange; the client sees it.
        })
        .finally(() => {
          open.delete(conn);
          try {
            conn.close();
          } catch (error) {
            if (!(error instanceof Deno.errors.BadResource)) throw error;
          }
          tasks.delete(task);
        });
      tasks.add(task);
    }
  })();

  return Promise.resolve({
    endpoint: `http://127.0.0.1:${port}`,
    port,
    inject(rule: FaultRule) {
      rules.push({ rule, left: rule.times ?? 1 });
    },
    clear() {
      rules.length = 0;
    },
    get log() {
      return log;
    },
    async close() {
      listener.close();
      await accepting.catch(() => {
        // The accept loop ends with an error once the listener is closed.
      });
      for (const conn of open) {
        try {
          conn.close();
        } catch (error) {
          if (!(error instanceof Deno.errors.BadResource)) throw error;
        }
      }
      await Promise.allSettled([...tasks]);
    },
  });
}
