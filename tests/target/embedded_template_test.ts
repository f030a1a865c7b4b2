/**
 * The embedded database's template (lib/target/embedded_template.ts): it was made by the PGlite
 * version deno.json pins, it unpacks into a whole private database, a damaged or unsafe
 * archive is refused naming the file, an abort stops the unpacking, and a first upload
 * into a new embedded database (examples/data) peaks far below what initdb in
 * WebAssembly took (about 600 MB).
 */

import assert from "node:assert/strict";
import { brotliCompressSync } from "node:zlib";
import { join } from "node:path";
import { UploadError } from "../../lib/core/errors.ts";
import {
  extractTemplate,
  MANIFEST_NAME,
  packTemplate,
  readTemplateManifest,
} from "../../lib/target/embedded_template.ts";
import { REPO_ROOT, UPLOAD_SCRIPT } from "../../support/cli.ts";
import { removeTree, setMtime, T1 } from "../../support/tree.ts";

/** Runs `fn` with a fresh temp directory that is removed afterwards. */
async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "embedded_template_test_" });
  try {
    await fn(dir);
  } finally {
    removeTree(dir);
  }
}

/** Every file under `dir` with its mode and bytes, by relative path. */
function listing(dir: string, relative = ""): Map<string, { mode: number; data?: Uint8Array }> {
  const out = new Map<string, { mode: number; data?: Uint8Array }>();
  for (const entry of Deno.readDirSync(join(dir, relative))) {
    const path = relative === "" ? entry.name : `${relative}/${entry.name}`;
    const mode = Deno.statSync(join(dir, path)).mode! & 0o777;
    if (entry.isDirectory) {
      out.set(`${path}/`, { mode });
      for (const [key, value] of listing(dir, path)) out.set(key, value);
    } else {
      out.set(path, { mode, data: Deno.readFileSync(join(dir, path)) });
    }
  }
  return out;
}

/** One ustar header block for `name` (a file of `size` bytes, or a directory). */
function tarHeader(name: string, size: number, type: "0" | "5" | "2"): Uint8Array {
  const header = new Uint8Array(512);
  const put = (at: number, text: string) => header.set(new TextEncoder().encode(text), at);
  put(0, name);
  put(100, "0000600\0");
  put(124, size.toString(8).padStart(11, "0") + "\0");
  put(156, type);
  put(257, "ustar\u000000");
  return header;
}

/** A brotli-compressed tar of `blocks` (headers and data, already padded) and end blocks. */
function archive(...blocks: Uint8Array[]): Uint8Array {
  const parts = [...blocks, new Uint8Array(1024)];
  const tar = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) {
    tar.set(part, at);
    at += part.length;
  }
  return new Uint8Array(brotliCompressSync(tar));
}

/** The manifest entry of a hand-made archive. */
function manifestBlocks(): Uint8Array[] {
  const json = new TextEncoder().encode(JSON.stringify({ pglite: "0.0.0", postgres: "18" }));
  const data = new Uint8Array(512);
  data.set(json);
  return [tarHeader(MANIFEST_NAME, json.length, "0"), data];
}

Deno.test("embedded template: made by the PGlite version deno.json pins", async () => {
  const config = JSON.parse(await Deno.readTextFile(join(REPO_ROOT, "deno.json")));
  const pinned = String(config.imports["@electric-sql/pglite"]).split("@").at(-1);
  const manifest = await readTemplateManifest();
  assert.equal(
    manifest.pglite,
    pinned,
    "lib/target/embedded_template.tar.br was made by another PGlite: run 'deno task embedded-template'",
  );
});

Deno.test("embedded template: unpacks a whole database, private, as its manifest says", async () => {
  await withTempDir(async (tmp) => {
    const dest = join(tmp, "db");
    await Deno.mkdir(dest);
    const manifest = await extractTemplate(dest);
    assert.equal((await Deno.readTextFile(join(dest, "PG_VERSION"))).trim(), manifest.postgres);
    const files = listing(dest);
    assert.ok(files.size > 900, `${files.size} entries`);
    assert.ok(!files.has(MANIFEST_NAME), "the manifest is not part of the database");
    for (const [path, { mode }] of files) {
      assert.equal(mode, path.endsWith("/") ? 0o700 : 0o600, path);
    }
    for (const name of ["global/pg_control", "base/5/PG_VERSION", "postgresql.conf"]) {
      assert.ok(files.has(name), name);
    }

    // Packing what was unpacked and unpacking that again gives the same files.
    const repacked = join(tmp, "again.tar.br");
    await Deno.writeFile(repacked, packTemplate(dest, manifest, { quality: 1 }));
    const again = join(tmp, "again");
    await Deno.mkdir(again);
    assert.deepEqual(await extractTemplate(again, { source: repacked }), manifest);
    assert.deepEqual(listing(again), files);
  });
});

Deno.test("embedded template: a damaged or unsafe archive is refused, naming it", async () => {
  await withTempDir(async (tmp) => {
    const cases: [string, Uint8Array, RegExp][] = [
      [
        "cut.tar.br",
        (await Deno.readFile(new URL("../../lib/target/embedded_template.tar.br", import.meta.url)))
          .subarray(
            0,
            100_000,
          ),
        /cut short|Cannot read/,
      ],
      ["garbage.tar.br", new TextEncoder().encode("not brotli at all"), /Cannot read/],
      [
        "no-manifest.tar.br",
        archive(tarHeader("PG_VERSION", 0, "0")),
        /first entry is not template\.json/,
      ],
      [
        "escape.tar.br",
        archive(...manifestBlocks(), tarHeader("../outside", 0, "0")),
        /unsafe entry name "\.\.\/outside"/,
      ],
      [
        "absolute.tar.br",
        archive(...manifestBlocks(), tarHeader("/etc/x", 0, "0")),
        /unsafe entry name/,
      ],
      [
        "symlink.tar.br",
        archive(...manifestBlocks(), tarHeader("link", 0, "2")),
        /link is neither a file nor a directory/,
      ],
    ];
    for (const [name, bytes, pattern] of cases) {
      const source = join(tmp, name);
      await Deno.writeFile(source, bytes);
      const dest = join(tmp, `dest-${name}`);
      await Deno.mkdir(dest);
      await assert.rejects(extractTemplate(dest, { source }), (error) => {
        assert.ok(error instanceof UploadError, `${name}: ${error}`);
        assert.equal(error.kind, "fatal");
        assert.match(error.message, /^Cannot read the embedded database template /);
        assert.ok(error.message.includes(source), `${name}: ${error.message}`);
        assert.match(error.message, pattern, name);
        assert.match(error.hint ?? "", /embedded-template/);
        return true;
      });
    }
    assert.equal(await Deno.lstat(join(tmp, "outside")).catch(() => null), null);
    await assert.rejects(
      extractTemplate(join(tmp, "dest-missing"), { source: join(tmp, "missing.tar.br") }),
      /Cannot read the embedded database template .*missing\.tar\.br/,
    );
  });
});

Deno.test("embedded template: an abort stops the unpacking between files", async () => {
  await withTempDir(async (tmp) => {
    const dest = join(tmp, "db");
    await Deno.mkdir(dest);
    const controller = new AbortController();
    const unpacking = extractTemplate(dest, { signal: controller.signal });
    controller.abort();
    await assert.rejects(unpacking, (error) => (error as Error).name === "AbortError");
    assert.ok(listing(dest).size < 900, "it stopped before the end");
  });
});

/** The `--v8-flags=...` of the `upload` task in deno.json, as users run it. */
async function uploadTaskV8Flags(): Promise<string> {
  const config = JSON.parse(await Deno.readTextFile(join(REPO_ROOT, "deno.json")));
  const flags = /--v8-flags=\S+/.exec(config.tasks.upload);
  assert.ok(flags, config.tasks.upload);
  return flags[0];
}

/** What Deno needs from this environment, and no database settings. */
function childEnv(): Record<string, string> {
  const env: Record<string, string> = { NO_COLOR: "1" };
  for (const name of ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME", "TMPDIR", "LANG"]) {
    const value = Deno.env.get(name);
    if (value !== undefined) env[name] = value;
  }
  return env;
}

/** Runs the uploader to its end while reading its peak RSS (VmHWM, KiB) from /proc. */
async function peakRssOf(args: string[], cwd: string): Promise<{ code: number; peakKb: number }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--quiet",
      await uploadTaskV8Flags(),
      "--config",
      join(REPO_ROOT, "deno.json"),
      UPLOAD_SCRIPT,
      ...args,
    ],
    cwd,
    env: childEnv(),
    clearEnv: true,
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  let peakKb = 0;
  const poll = () => {
    try {
      const status = Deno.readTextFileSync(`/proc/${child.pid}/status`);
      peakKb = Math.max(peakKb, Number(/^VmHWM:\s+(\d+)/m.exec(status)?.[1] ?? 0));
    } catch {
      // The child has exited: its last reading stands (VmHWM only grows).
    }
  };
  const timer = setInterval(poll, 20);
  const { code } = await child.status;
  clearInterval(timer);
  return { code, peakKb };
}

Deno.test("embedded template: a first upload into a new embedded database stays far below initdb's 600 MB", async () => {
  await withTempDir(async (tmp) => {
    const data = join(tmp, "data");
    for (const folder of ["Batch1", "Batch2"]) {
      await Deno.mkdir(join(data, folder), { recursive: true });
      const stats = join(data, folder, "stats.json");
      await Deno.writeTextFile(stats, JSON.stringify({ result: "PASS" }));
      setMtime(stats, T1);
    }
    const run = await peakRssOf([data, "--db-path", join(tmp, "upload_tracker.db")], tmp);
    assert.equal(run.code, 0);
    assert.ok(await Deno.stat(join(tmp, "upload_tracker.pgdata", "PG_VERSION")));
    // Measured here: about 235 MB with the template, 580-620 MB with initdb. The bound
    // leaves room for another machine, and none for initdb.
    assert.ok(
      run.peakKb > 0 && run.peakKb < 350 * 1024,
      `peak RSS ${Math.round(run.peakKb / 1024)} MB`,
    );
  });
});
