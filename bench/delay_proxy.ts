/**
 * A TCP proxy on 127.0.0.1 that adds a fixed one-way delay to the bytes flowing each way,
 * like a long network path (a lab far from its Supabase region) without a bandwidth limit:
 * every chunk read at time t is written at t + delay, in order, so a round trip costs
 * 2 x delay however many chunks are in flight.
 *
 * ```sh
 * deno run -A bench/delay_proxy.ts --target 127.0.0.1:5432 --delay-ms 20 [--port 6000]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";

/** Options for {@linkcode startDelayProxy}. */
export interface DelayProxyOptions {
  /** Where connections go. */
  targetHost: string;
  targetPort: number;
  /** One-way delay added in each direction (ms). */
  delayMs: number;
  /** Port to listen on (127.0.0.1). Default 0: any free port. */
  port?: number;
}

/** A running proxy. */
export interface DelayProxy {
  /** The port it listens on. */
  readonly port: number;
  /** Connections accepted so far. */
  readonly connections: number;
  /** Stops listening and closes every open connection. */
  close(): Promise<void>;
}

function sleep(ms: number): Promise<void> {
  return ms > 0 ? new Promise((resolve) => setTimeout(resolve, ms)) : Promise.resolve();
}

/**
 * Copies `from` to `to`, delivering each chunk `delayMs` after it was read. Reading never
 * waits for the delayed writes, so the pipe holds up to delay x rate bytes in flight.
 */
async function pump(from: Deno.Conn, to: Deno.Conn, delayMs: number): Promise<void> {
  const queue: { due: number; data: Uint8Array }[] = [];
  let wake = null as (() => void) | null;
  let ended = false;
  const writer = (async () => {
    while (true) {
      if (queue.length === 0) {
        if (ended) break;
        await new Promise<void>((resolve) => wake = resolve);
        wake = null;
        continue;
      }
      const head = queue[0];
      await sleep(head.due - performance.now());
      queue.shift();
      let off = 0;
      while (off < head.data.length) off += await to.write(head.data.subarray(off));
    }
  })();
  try {
    while (true) {
      const buffer = new Uint8Array(64 * 1024);
      const n = await from.read(buffer);
      if (n === null) break;
      queue.push({ due: performance.now() + delayMs, data: buffer.subarray(0, n) });
      wake?.();
    }
  } catch (error) {
    // The peer reset the connection or it was closed by close(): stop copying.
    if (
      !(error instanceof Deno.errors.BadResource || error instanceof Deno.errors.ConnectionReset ||
        error instanceof Deno.errors.Interrupted)
    ) throw error;
  } finally {
    ended = true;
    wake?.();
  }
  try {
    await writer;
    await to.closeWrite();
  } catch (error) {
    // The other side is already gone: nothing left to deliver to.
    if (
      !(error instanceof Deno.errors.BadResource || error instanceof Deno.errors.BrokenPipe ||
        error instanceof Deno.errors.ConnectionReset || error instanceof Deno.errors.NotConnected)
    ) {
      throw error;
    }
  }
}

/** Starts a delaying proxy; resolves once it listens. */
export function startDelayProxy(options: DelayProxyOptions): DelayProxy {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: options.port ?? 0 });
  const open = new Set<Deno.Conn>();
  const tasks = new Set<Promise<void>>();
  let connections = 0;
  const serve = async (client: Deno.TcpConn) => {
    let server: Deno.TcpConn;
    try {
      server = await Deno.connect({ hostname: options.targetHost, port: options.targetPort });
    } catch {
      // The target is down: the client sees a closed connection, as it would for real.
      client.close();
      return;
    }
    client.setNoDelay(true);
    server.setNoDelay(true);
    open.add(client);
    open.add(server);
    try {
      await Promise.all([
        pump(client, server, options.delayMs),
        pump(server, client, options.delayMs),
      ]);
    } finally {
      for (const c of [client, server]) {
        open.delete(c);
        try {
          c.close();
        } catch {
          // Already closed by the other direction.
        }
      }
    }
  };
  const accepting = (async () => {
    try {
      for await (const client of listener) {
        connections++;
        const task = serve(client).catch((error) => {
          console.error(`delay proxy: ${error instanceof Error ? error.message : error}`);
        }).finally(() => tasks.delete(task));
        tasks.add(task);
      }
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource)) throw error;
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    get connections() {
      return connections;
    },
    async close() {
      listener.close();
      await accepting;
      for (const c of open) {
        try {
          c.close();
        } catch {
          // Closed meanwhile.
        }
      }
      await Promise.allSettled([...tasks]);
    },
  };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      target: { type: "string" },
      "delay-ms": { type: "string", default: "20" },
      port: { type: "string", default: "0" },
    },
  });
  const [host, port] = (values.target ?? "").split(":");
  if (!host || !Number(port)) {
    console.error("Usage: delay_proxy.ts --target HOST:PORT [--delay-ms MS] [--port PORT]");
    Deno.exit(2);
  }
  const proxy = startDelayProxy({
    targetHost: host,
    targetPort: Number(port),
    delayMs: Number(values["delay-ms"]),
    port: Number(values.port),
  });
  console.log(`Listening on 127.0.0.1:${proxy.port}, ${values["delay-ms"]} ms each way`);
}
