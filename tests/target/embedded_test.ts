/**
 * The embedded PGlite server: psql reaches it over the private socket, data survives a
 * restart and a kill -9, stale sockets are cleared, parallel psql sessions all land, and a
 * second server on the same folder is refused while the first one runs.
 */

import assert from "node:assert/strict";
import { UploadError } from "../../lib/core/errors.ts";
import type { PsqlConnection } from "../../lib/sink/postgres/psql.ts";
import { type EmbeddedServer, startEmbedded } from "../../lib/target/embedded.ts";

const DECODER = new TextDecoder();
const ENCODER = new TextEncoder();

/** Runs `fn` with a fresh temp directory that is removed afterwards, whatever happens. */
async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "embedded_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Starts a server on `dataDir`, runs `fn`, and stops the server even when `fn` throws. */
async function withServer(
  dataDir: string,
  fn: (server: EmbeddedServer) => Promise<void>,
): Promise<void> {
  const server = await startEmbedded(dataDir);
  try {
    await fn(server);
  } finally {
    await server.stop();
  }
}

/** `psql -XAt -c sql`, stopping on error; returns stdout, throws with stderr on failure. */
async function psql(connection: PsqlConnection, sql: string): Promise<string> {
  const output = await new Deno.Command("psql", {
    args: ["-XAt", "-v", "ON_ERROR_STOP=1", ...connection.args, "-c", sql],
    env: connection.env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (output.code !== 0) {
    throw new Error(`psql exited with ${output.code}: ${DECODER.decode(output.stderr)}`);
  }
  return DECODER.decode(output.stdout).trim();
}

/** Feeds a whole script to one psql process on stdin; returns its exit code and output. */
async function psqlScript(
  connection: PsqlConnection,
  script: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command("psql", {
    args: ["-XAtq", ...connection.args],
    env: connection.env,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(ENCODER.encode(script));
  await writer.close();
  const output = await child.output();
  return {
    code: output.code,
    stdout: DECODER.decode(output.stdout),
    stderr: DECODER.decode(output.stderr),
  };
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

Deno.test("embedded: psql connects, data survives a restart, stop removes the socket dir", async () => {
  await withTempDir(async (tmp) => {
    const dataDir = `${tmp}/db`;
    let socketDir = "";
    await withServer(dataDir, async (server) => {
      socketDir = server.socketDir;
      assert.equal(server.dataDir, dataDir);
      assert.deepEqual(server.connection.args, [
        "-h",
        server.socketDir,
        "-p",
        "5432",
        "-U",
        "postgres",
        "-d",
        "postgres",
      ]);
      assert.match(server.connection.display, /^embedded PGlite at /);
      assert.equal((await Deno.stat(server.socketDir)).mode! & 0o777, 0o700);
      assert.ok((await Deno.lstat(`${server.socketDir}/.s.PGSQL.5432`)).isSocket);
      await psql(server.connection, "create table kept (k text primary key, n int)");
      await psql(server.connection, "insert into kept values ('a', 1), ('b''s', 2)");
    });
    assert.equal(await exists(socketDir), false, "stop() removes the socket directory");

    await withServer(dataDir, async (server) => {
      assert.notEqual(server.socketDir, socketDir);
      assert.equal(
        await psql(server.connection, "select string_agg(k || '=' || n, ',' order by k) from kept"),
        "a=1,b's=2",
      );
    });
  });
});

Deno.test("embedded: a second start on the same folder fails with kind locked", async () => {
  await withTempDir(async (tmp) => {
    const dataDir = `${tmp}/db`;
    await withServer(dataDir, async (server) => {
      await assert.rejects(
        () => startEmbedded(dataDir),
        (error) =>
          error instanceof UploadError && error.kind === "locked" && error.subject === dataDir &&
          error.message.includes(`pid ${Deno.pid}`),
      );
      // The refused start left the running server alone.
      assert.equal(await psql(server.connection, "select 41 + 1"), "42");
    });
    // Released by stop(): the next start succeeds.
    await withServer(dataDir, async (server) => {
      assert.equal(await psql(server.connection, "select 1"), "1");
    });
  });
});

Deno.test("embedded: a stale socket file in the socket directory is removed", async () => {
  await withTempDir(async (tmp) => {
    const socketDir = `${tmp}/sock`;
    await Deno.mkdir(socketDir, { mode: 0o755 });
    // A dead socket, as a crashed server leaves it. Closing a listener unlinks its socket
    // file, so keep the inode through a hard link and put it back afterwards.
    const path = `${socketDir}/.s.PGSQL.5432`;
    const listener = Deno.listen({ transport: "unix", path });
    await Deno.link(path, `${path}.keep`);
    listener.close();
    await Deno.rename(`${path}.keep`, path);
    assert.ok((await Deno.lstat(path)).isSocket);

    const server = await startEmbedded(`${tmp}/db`, { socketDir });
    try {
      assert.equal(server.socketDir, socketDir);
      assert.equal((await Deno.stat(socketDir)).mode! & 0o777, 0o700);
      assert.equal(
        await psql(server.connection, "select 'through the new socket'"),
        "through the new socket",
      );
      // A live socket is not stale: another folder asking for the same directory is refused
      // and the running server keeps its socket.
      await assert.rejects(
        () => startEmbedded(`${tmp}/other`, { socketDir }),
        (error) => error instanceof UploadError && error.kind === "locked",
      );
      assert.equal(await psql(server.connection, "select 'still served'"), "still served");
    } finally {
      await server.stop();
    }
    assert.equal(await exists(path), false);
  });
});

Deno.test("embedded: after kill -9 the lock is free, the socket dir is cleared, rows survive", async () => {
  await withTempDir(async (tmp) => {
    const dataDir = `${tmp}/db`;
    const module = new URL("../../lib/target/embedded.ts", import.meta.url).href;
    const code = `
      import { startEmbedded } from ${JSON.stringify(module)};
      const server = await startEmbedded(${JSON.stringify(dataDir)});
      console.log(JSON.stringify({ socketDir: server.socketDir }));
      await new Promise(() => {});
    `;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["eval", "--config", new URL("../../deno.json", import.meta.url).pathname, code],
      stdin: "null",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    let socketDir = "";
    try {
      const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let text = "";
      while (!text.includes("\n")) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`Child server exited before it was ready: ${text}`);
        text += value;
      }
      reader.releaseLock();
      socketDir = JSON.parse(text).socketDir;
      const connection = {
        args: ["-h", socketDir, "-p", "5432", "-U", "postgres", "-d", "postgres"],
        env: {},
        display: "child",
      };
      await psql(connection, "create table crash (n int)");
      await psql(connection, "insert into crash select generate_series(1, 1000)");

      // Another process serves the folder: refused, naming the holder.
      await assert.rejects(
        () => startEmbedded(dataDir),
        (error) =>
          error instanceof UploadError && error.kind === "locked" &&
          error.message.includes(`pid ${child.pid}`),
      );
    } finally {
      child.kill("SIGKILL");
      await child.status;
      await child.stdout.cancel().catch(() => {});
    }
    assert.ok(await exists(`${socketDir}/.s.PGSQL.5432`), "kill -9 leaves the socket behind");

    const lines: string[] = [];
    const server = await startEmbedded(dataDir, { log: (line) => lines.push(line) });
    try {
      assert.equal(await exists(socketDir), false, "the crashed run's socket dir is removed");
      assert.ok(lines.some((line) => line.includes(socketDir)), lines.join("\n"));
      assert.equal(
        await psql(server.connection, "select count(*), sum(n) from crash"),
        "1000|500500",
      );
    } finally {
      await server.stop();
    }
  });
});

Deno.test("embedded: four psql processes inserting at once all land", async () => {
  await withTempDir(async (tmp) => {
    await withServer(`${tmp}/db`, async (server) => {
      await psql(
        server.connection,
        "create table par (id uuid primary key default gen_random_uuid(), " +
          "worker int not null, n int not null, images text[] not null, unique (worker, n))",
      );
      const WORKERS = 4;
      const STATEMENTS = 40;
      const ROWS = 50;
      const scripts = Array.from({ length: WORKERS }, (_, worker) => {
        let script = "";
        for (let s = 0; s < STATEMENTS; s++) {
          const rows = Array.from({ length: ROWS }, (_, i) => ({
            worker,
            n: s * ROWS + i,
            images: [`img ${i}.jpg`, `it's ${s}.png`],
          }));
          const json = JSON.stringify(rows).replaceAll("'", "''");
          script += `insert into par (worker, n, images) select worker, n, images ` +
            `from jsonb_to_recordset('${json}'::jsonb) as r(worker int, n int, images text[]) ` +
            `on conflict (worker, n) do update set images = excluded.images ` +
            `where par.images is distinct from excluded.images returning (xmax = 0);\n` +
            `\\if :ERROR\n\\echo reply err :LAST_ERROR_SQLSTATE\n\\else\n` +
            `\\echo reply ok :ROW_COUNT\n\\endif\n`;
        }
        return script;
      });
      const results = await Promise.all(scripts.map((s) => psqlScript(server.connection, s)));
      for (const result of results) {
        assert.equal(result.code, 0, result.stderr);
        const replies = result.stdout.split("\n").filter((line) => line.startsWith("reply "));
        assert.deepEqual(replies, Array(STATEMENTS).fill(`reply ok ${ROWS}`));
      }
      assert.equal(
        await psql(server.connection, "select count(*), count(distinct (worker, n)) from par"),
        `${WORKERS * STATEMENTS * ROWS}|${WORKERS * STATEMENTS * ROWS}`,
      );
    });
  });
});

Deno.test("embedded: a non-empty folder that is not a database is refused", async () => {
  await withTempDir(async (tmp) => {
    await Deno.mkdir(`${tmp}/photos`);
    await Deno.writeTextFile(`${tmp}/photos/stats.json`, "{}");
    await assert.rejects(
      () => startEmbedded(`${tmp}/photos`),
      (error) => error instanceof UploadError && error.kind === "config",
    );
    assert.deepEqual([...Deno.readDirSync(`${tmp}/photos`)].map((e) => e.name), ["stats.json"]);
    // The refused start released its lock: a real database folder beside it still starts.
    await withServer(`${tmp}/db`, async (server) => {
      assert.equal(await psql(server.connection, "select 1"), "1");
    });
  });
});
