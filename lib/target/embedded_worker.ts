/**
 * The embedded database's own thread: PGlite (PostgreSQL in WebAssembly) and the Unix
 * socket server psql talks to both run here, so the statements that block for seconds
 * (startup, every query) block this worker's event loop and never the main
 * thread's. The main thread ({@linkcode startEmbedded} in lib/target/embedded.ts) owns the lock,
 * the folders and the socket directory; it can end this worker at any moment with
 * `terminate()`, which stops PostgreSQL as a crash would.
 *
 * Protocol, one request per worker:
 *
 * - `serve`: open `dataDir` (always an existing database: a new one is unpacked from the
 *   template by the main thread first), listen on `socketPath`, answer `ready`; later
 *   `stop` closes the clients, shuts PostgreSQL down cleanly and answers `stopped`.
 *
 * Any failure answers `failed` with the stage and message. `log` messages carry lines for
 * the caller's log (server errors seen while serving).
 *
 * @module
 */

/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />

import { join } from "node:path";
import { PGlite, type PGliteOptions } from "@electric-sql/pglite";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";

/** What the main thread asks of this worker. */
export type EmbeddedRequest =
  | {
    type: "serve";
    dataDir: string;
    assetsDir?: string;
    startParams: string[];
    socketPath: string;
    maxConnections: number;
  }
  | { type: "stop" };

/** What this worker answers. */
export type EmbeddedReply =
  | { type: "ready" }
  | { type: "stopped" }
  | { type: "log"; line: string }
  | { type: "failed"; stage: "open" | "listen" | "stop"; message: string };

/** The files PGlite loads at startup, looked up in `assetsDir` when one is given. */
const ASSET_FILES = { pglite: "pglite.wasm", initdb: "initdb.wasm", bundle: "pglite.data" };

/** The first eight bytes of a CancelRequest: its length (16) and its code. */
const CANCEL_REQUEST_HEAD = [16, 80877102];

let db: PGlite | null = null;
let server: PGLiteSocketServer | null = null;

function reply(message: EmbeddedReply): void {
  self.postMessage(message);
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Starts PGlite on `dir`, with its WebAssembly and data files from `assetsDir` if given. */
async function openDatabase(
  dir: string,
  assetsDir: string | undefined,
  startParams: string[],
): Promise<PGlite> {
  const options: PGliteOptions = { dataDir: dir, startParams };
  if (assetsDir !== undefined) {
    const read = (name: string) => Deno.readFile(join(assetsDir, name));
    const [pglite, initdb, bundle] = await Promise.all([
      read(ASSET_FILES.pglite),
      read(ASSET_FILES.initdb),
      read(ASSET_FILES.bundle),
    ]);
    options.pgliteWasmModule = await WebAssembly.compile(pglite);
    options.initdbWasmModule = await WebAssembly.compile(initdb);
    options.fsBundle = new Blob([bundle]);
  }
  return await PGlite.create(options);
}

/**
 * Closes connections that carry a CancelRequest. psql's Ctrl-C sends one on a new
 * connection and then waits until the server closes it; pglite-socket 0.2.17 reads the
 * request, ignores it and keeps the connection open, so psql hung for good. PGlite cannot
 * cancel a running statement anyway: closing the connection at once lets the statement
 * finish and psql go on, as a server that has nothing to cancel does.
 */
function closeCancelRequests(target: PGLiteSocketServer): void {
  type Socket = {
    once(event: "data", listener: (chunk: Uint8Array) => void): void;
    end(): void;
  };
  const internals = target as unknown as { handleConnection(socket: Socket): Promise<void> };
  const handle = internals.handleConnection.bind(target);
  internals.handleConnection = (socket) => {
    // Registered before pglite-socket's own listener, which then sees the request and
    // ignores it; the socket is closed right after.
    socket.once("data", (chunk) => {
      if (chunk.length < 8) return;
      const view = new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength);
      if (
        view.getInt32(0) === CANCEL_REQUEST_HEAD[0] && view.getInt32(4) === CANCEL_REQUEST_HEAD[1]
      ) {
        socket.end();
      }
    });
    return handle(socket);
  };
}

async function serve(request: Extract<EmbeddedRequest, { type: "serve" }>): Promise<void> {
  try {
    db = await openDatabase(request.dataDir, request.assetsDir, request.startParams);
  } catch (error) {
    reply({ type: "failed", stage: "open", message: messageOf(error) });
    return;
  }
  const listener = new PGLiteSocketServer({
    db,
    path: request.socketPath,
    maxConnections: request.maxConnections,
  });
  closeCancelRequests(listener);
  listener.addEventListener("error", (event) => {
    reply({
      type: "log",
      line: `Embedded server error: ${messageOf((event as CustomEvent).detail)}`,
    });
  });
  try {
    await listener.start();
  } catch (error) {
    const message = messageOf(error);
    await listener.stop();
    await db.close().catch((closeError) => {
      // Reported with the listen failure; the main thread ends this worker either way.
      reply({ type: "log", line: `Cannot close the embedded database: ${messageOf(closeError)}` });
    });
    db = null;
    reply({ type: "failed", stage: "listen", message });
    return;
  }
  server = listener;
  reply({ type: "ready" });
}

async function stop(): Promise<void> {
  try {
    await server?.stop();
    server = null;
    await db?.close();
    db = null;
  } catch (error) {
    reply({ type: "failed", stage: "stop", message: messageOf(error) });
    return;
  }
  reply({ type: "stopped" });
}

self.onmessage = (event: MessageEvent<EmbeddedRequest>) => {
  const request = event.data;
  if (request.type === "serve") serve(request);
  else if (request.type === "stop") stop();
};
