/**
 * A throwaway S3-compatible server for tests and benchmarks: s3rver (the maintained
 * `@20minutes/s3rver` fork, which verifies AWS Signature Version 4: a wrong secret gets
 * `403 SignatureDoesNotMatch`, an unknown key `403 InvalidAccessKeyId`) in a child Deno
 * process, on a free 127.0.0.1 port, storing objects in a temp directory, with one bucket
 * and one access key. Path-style addressing, like Supabase Storage's S3 endpoint.
 *
 * The child runs with `--no-config --no-lock`: s3rver is resolved into Deno's global cache,
 * not into the project's lock file and node_modules (its package declares a `bin` it does
 * not ship, and a project that resolved it would print a warning on every run).
 *
 * ```ts
 * const s3 = await startS3Server();
 * try {
 *   const store = storeFromEnv(s3.env(), `s3://${s3.bucket}/prefix`);
 *   // ... or: rclone copy dir s3test:bucket/prefix with s3.rcloneEnv("s3test")
 * } finally {
 *   await s3.close();
 * }
 * ```
 *
 * @module
 */

/** The s3rver package the child runs, pinned. */
import { type PgServer, startPostgres } from "./postgres.ts";
import { withTempDir } from "./run.ts";

export const S3RVER_PACKAGE = "npm:@20minutes/s3rver@5.0.0";

/** Options of {@linkcode startS3Server}. */
export interface S3ServerOptions {
  /** The bucket created at start. Default `images`. */
  bucket?: string;
  /** The one access key the server knows. Default `AKIATESTSTORAGE01`. */
  accessKeyId?: string;
  /** Its secret. Default: a random one. */
  secretAccessKey?: string;
  /** The region clients sign for (the server takes any). Default `eu-central-1`. */
  region?: string;
  /** Port; default a free one. */
  port?: number;
}

/** A running server. */
export interface S3Server {
  /** `http://127.0.0.1:PORT`. */
  readonly endpoint: string;
  readonly host: string;
  readonly port: number;
  readonly bucket: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly region: string;
  /** Where the objects are kept. */
  readonly dataDir: string;
  /** `AWS_*` variables that point a client at this server. */
  env(): Record<string, string>;
  /**
   * Environment variables defining an rclone remote `name` (type s3, provider Other,
   * path style) for this server: `rclone copy DIR name:BUCKET/PREFIX` then needs no config
   * file.
   */
  rcloneEnv(name?: string): Record<string, string>;
  /** Stops the server (the objects stay). Harmless when stopped. */
  stop(): Promise<void>;
  /** Starts it again on the same port with the same objects. */
  start(): Promise<void>;
  /** The tail of the server's stderr. */
  logTail(): string;
  /** Stops the server and removes its directory. */
  close(): Promise<void>;
}

const DECODER = new TextDecoder();

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

function randomSecret(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  return btoa(String.fromCharCode(...bytes)).replace(/[^A-Za-z0-9]/g, "x");
}

/** Starts s3rver in a child process; resolves when it accepts connections. */
export async function startS3Server(options: S3ServerOptions = {}): Promise<S3Server> {
  const bucket = options.bucket ?? "images";
  const accessKeyId = options.accessKeyId ?? "AKIATESTSTORAGE01";
  const secretAccessKey = options.secretAccessKey ?? randomSecret();
  const region = options.region ?? "eu-central-1";
  const port = options.port ?? freePort();
  const host = "127.0.0.1";
  const dataDir = await Deno.makeTempDir({ prefix: "s3rver-" });
  let child: Deno.ChildProcess | undefined;
  let stderrTail = "";

  async function start(): Promise<void> {
    if (child) return;
    const cmd = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--quiet",
        "--no-config",
        "--no-lock",
        "--node-modules-dir=none",
        "--allow-all",
        new URL(import.meta.url).pathname,
      ],
      env: {
        S3RVER_CHILD: "1",
        S3RVER_DIR: dataDir,
        S3RVER_PORT: String(port),
        S3RVER_BUCKET: bucket,
        S3RVER_ACCESS_KEY_ID: accessKeyId,
        S3RVER_SECRET_ACCESS_KEY: secretAccessKey,
      },
      // The child exits when this pipe closes, so a killed test leaves no server behind.
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    });
    const proc = cmd.spawn();
    child = proc;
    (async () => {
      for await (const chunk of proc.stderr) {
        stderrTail = (stderrTail + DECODER.decode(chunk)).slice(-4096);
      }
    })().catch(() => {
      // The pipe closes when the child dies; the tail kept so far is what matters.
    });
    const reader = proc.stdout.getReader();
    let out = "";
    const deadline = Date.now() + 60_000;
    while (!out.includes("\n")) {
      const timer = new Promise<null>((resolve) =>
        setTimeout(() => resolve(null), Math.max(0, deadline - Date.now()))
      );
      const read = await Promise.race([reader.read(), timer]);
      if (read === null || read.done) {
        reader.releaseLock();
        await stopChild();
        throw new Error(`s3rver did not start: ${stderrTail.trim() || "no output"}`);
      }
      out += DECODER.decode(read.value);
    }
    reader.releaseLock();
    // Keep draining stdout so the child never blocks on a full pipe.
    proc.stdout.pipeTo(new WritableStream()).catch(() => {
      // Closed with the child.
    });
    if (!out.startsWith("ready")) {
      await stopChild();
      throw new Error(`s3rver did not start: ${out.trim()} ${stderrTail.trim()}`);
    }
  }

  async function stopChild(): Promise<void> {
    const proc = child;
    if (!proc) return;
    child = undefined;
    await proc.stdin.close().catch(() => {
      // Already closed by the child's exit.
    });
    try {
      proc.kill("SIGTERM");
    } catch (error) {
      // Already exited: nothing to stop.
      if (!(error instanceof TypeError)) throw error;
    }
    await proc.status;
  }

  await start();
  const endpoint = `http://${host}:${port}`;
  return {
    endpoint,
    host,
    port,
    bucket,
    accessKeyId,
    secretAccessKey,
    region,
    dataDir,
    env: () => ({
      AWS_ACCESS_KEY_ID: accessKeyId,
      AWS_SECRET_ACCESS_KEY: secretAccessKey,
      AWS_REGION: region,
      AWS_ENDPOINT_URL: endpoint,
    }),
    rcloneEnv: (name = "s3test") => {
      const p = `RCLONE_CONFIG_${name.toUpperCase()}_`;
      return {
        [`${p}TYPE`]: "s3",
        [`${p}PROVIDER`]: "Other",
        [`${p}ENV_AUTH`]: "false",
        [`${p}ACCESS_KEY_ID`]: accessKeyId,
        [`${p}SECRET_ACCESS_KEY`]: secretAccessKey,
        [`${p}REGION`]: region,
        [`${p}ENDPOINT`]: endpoint,
        [`${p}FORCE_PATH_STYLE`]: "true",
        // An inherited CA bundle for AWS would make rclone's S3 SDK refuse the plain-HTTP
        // transport; this server needs none.
        AWS_CA_BUNDLE: "",
      };
    },
    stop: stopChild,
    start,
    logTail: () => stderrTail,
    close: async () => {
      await stopChild();
      await Deno.remove(dataDir, { recursive: true }).catch((error) => {
        if (!(error instanceof Deno.errors.NotFound)) throw error;
      });
    },
  };
}

/** The child side: runs s3rver until SIGTERM. */
async function serveChild(): Promise<void> {
  const env = (name: string): string => {
    const value = Deno.env.get(name);
    if (value === undefined) throw new Error(`${name} is not set`);
    return value;
  };
  // A computed specifier: the project's type check and lock file never resolve it.
  const pkg: string = S3RVER_PACKAGE;
  const { default: S3rver } = await import(pkg);
  const { default: AWSAccount } = await import(`${pkg}/lib/models/account.js`);
  // Only our key: the built-in S3RVER/S3RVER pair would let any client in.
  AWSAccount.DUMMY_ACCOUNT.revokeAccessKey("S3RVER");
  AWSAccount.DUMMY_ACCOUNT.createKeyPair(
    env("S3RVER_ACCESS_KEY_ID"),
    env("S3RVER_SECRET_ACCESS_KEY"),
  );
  const server = new S3rver({
    address: "127.0.0.1",
    port: Number(env("S3RVER_PORT")),
    silent: true,
    directory: env("S3RVER_DIR"),
    vhostBuckets: false,
    allowMismatchedSignatures: false,
    configureBuckets: [{ name: env("S3RVER_BUCKET") }],
  });
  await server.run();
  console.log("ready");
  Deno.addSignalListener("SIGTERM", () => Deno.exit(0));
  // Objects are on disk before each reply, so ending at once loses nothing.
  await Deno.stdin.readable.pipeTo(new WritableStream());
  Deno.exit(0);
}

if (import.meta.main && Deno.env.get("S3RVER_CHILD") === "1") {
  await serveChild();
}

/**
 * Runs `fn` with a throwaway PostgreSQL server, an S3-compatible server and a temp
 * directory (named with `prefix`), all removed afterwards whatever happens.
 */
export async function withPgAndS3(
  prefix: string,
  fn: (pg: PgServer, s3: S3Server, dir: string) => Promise<void>,
): Promise<void> {
  const pg = await startPostgres();
  const s3 = await startS3Server();
  try {
    await withTempDir(prefix, (dir) => fn(pg, s3, dir));
  } finally {
    await s3.close();
    await pg.close();
  }
}
