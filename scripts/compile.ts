/**
 * `deno task compile`: builds standalone executables of the two entry points with
 * `deno compile`, PGlite's WebAssembly and data files and the embedded database's template
 * included, so a device needs neither Deno nor the repository (psql is still needed):
 *
 * ```
 * dist/upload_manager   same flags as `deno task upload`
 * dist/quick_upload     same flags as `deno task quick`
 * ```
 *
 * `deno compile` downloads Deno's runtime (`denort`) from dl.deno.land the first time.
 * Where that host cannot be reached, set `DENORT_BIN` to a local denort binary of the same
 * Deno version; when neither works, this ends with one line saying so. Each binary is run
 * once with `--help` before it is reported built, so a wrong DENORT_BIN (e.g. `deno`
 * itself, which yields a binary that opens a REPL) is caught here, not on the device.
 *
 * Options: `--out-dir DIR` (default `dist`), `--target TRIPLE` (e.g.
 * `aarch64-unknown-linux-gnu` for a 64-bit Raspberry Pi; the check run is skipped then).
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { join, relative, resolve } from "node:path";
import { parseArgs } from "node:util";

/** The executables built, with the first words their `--help` prints. */
const ENTRIES = [
  { name: "upload_manager", script: "scripts/upload_manager.ts", help: "Upload test folders" },
  { name: "quick_upload", script: "scripts/quick_upload.ts", help: "Upload one or more test" },
] as const;

/** What the executables may do: the same permissions as the deno tasks. */
const PERMISSIONS = [
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-run",
  "--allow-sys",
  "--allow-net",
];

/** PGlite's files loaded at runtime beside its module (see lib/target/embedded.ts). */
const PGLITE_ASSETS = ["pglite.wasm", "initdb.wasm", "pglite.data"];

const ROOT = resolve(fileURLToPath(new URL("../", import.meta.url)));

/** A failure that ends the build with one line. */
class BuildError extends Error {}

async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { "out-dir": { type: "string" }, target: { type: "string" } },
    strict: true,
  });
  const outDir = resolve(values["out-dir"] ?? join(ROOT, "dist"));
  const target = values.target;
  const native = target === undefined || target === Deno.build.target;
  const includes = await pgliteIncludes();
  await Deno.mkdir(outDir, { recursive: true });
  const log: string[] = [];
  for (const entry of ENTRIES) {
    const output = join(outDir, entry.name);
    const args = [
      "compile",
      ...PERMISSIONS,
      // A smaller heap keeps resident memory low; the run streams. One thread compiles the
      // embedded database's WebAssembly: less memory at once (see docs/benchmarks.md).
      "--v8-flags=--max-semi-space-size=4,--max-old-space-size=192,--wasm-num-compilation-tasks=1",
      ...includes.flatMap((file) => ["--include", file]),
      // The folder walk and the embedded database run in workers, loaded by URL at run
      // time: bundle their modules too.
      "--include",
      join(ROOT, "lib", "source", "walk_worker.ts"),
      "--include",
      join(ROOT, "lib", "target", "embedded_worker.ts"),
      // The empty database a new embedded one is unpacked from (lib/target/embedded_template.ts).
      "--include",
      join(ROOT, "lib", "target", "embedded_template.tar.br"),
      ...(target ? ["--target", target] : []),
      "--output",
      output,
      entry.script,
    ];
    const result = await new Deno.Command(Deno.execPath(), {
      args,
      cwd: ROOT,
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(result.stdout) + new TextDecoder().decode(result.stderr);
    log.push(`$ deno ${args.join(" ")}\n${text}`);
    if (!result.success) {
      const logPath = join(outDir, "compile.log");
      await Deno.writeTextFile(logPath, log.join("\n"));
      throw new BuildError(`${explainFailure(text, target)} (full output: ${shown(logPath)})`);
    }
    if (native) await checkBinary(output, entry.help);
    const size = (await Deno.stat(output)).size;
    console.log(`Built ${shown(output)} (${Math.round(size / 1024 / 1024)} MB)`);
  }
  return 0;
}

/** Absolute paths of PGlite's runtime files, installing the npm packages when missing. */
async function pgliteIncludes(): Promise<string[]> {
  const dist = join(ROOT, "node_modules", "@electric-sql", "pglite", "dist");
  const find = () => {
    try {
      const real = Deno.realPathSync(dist);
      return PGLITE_ASSETS.map((name) => join(real, name)).filter((file) => {
        try {
          return Deno.statSync(file).isFile;
        } catch (_error) {
          return false; // not there: reported below when none is
        }
      });
    } catch (_error) {
      return [];
    }
  };
  let files = find();
  if (files.length < PGLITE_ASSETS.length) {
    const installed = await new Deno.Command(Deno.execPath(), {
      args: ["install", "--quiet"],
      cwd: ROOT,
      stdin: "null",
    }).output();
    files = find();
    if (!installed.success || files.length < PGLITE_ASSETS.length) {
      throw new BuildError(
        `Cannot find PGlite's ${PGLITE_ASSETS.join(", ")} in ${shown(dist)}: ` +
          `run 'deno install' (it needs the npm registry) and try again`,
      );
    }
  }
  return files;
}

/**
 * One line saying why `deno compile` failed and what to do, from its output.
 *
 * @example
 * ```ts
 * explainFailure("0: Could not find denort at '/x'", undefined);
 * // "DENORT_BIN=/x does not exist: ..."
 * ```
 */
export function explainFailure(output: string, target: string | undefined): string {
  const version = Deno.version.deno;
  const triple = target ?? Deno.build.target;
  const zip = `denort-${triple}.zip`;
  const where = `https://dl.deno.land/release/v${version}/${zip}`;
  const missing = /Could not find denort at '([^']*)'/.exec(output);
  if (missing) {
    return `DENORT_BIN=${missing[1]} does not exist: point DENORT_BIN at the denort binary ` +
      `of Deno ${version} for ${triple} (unzipped from ${where}), or unset it where ` +
      `dl.deno.land is reachable`;
  }
  if (/dl\.deno\.land|error sending request|Download/i.test(output)) {
    const causedBy = output.split("Caused by:")[1]?.split("Stack backtrace:")[0] ?? "";
    const causes = [...causedBy.matchAll(/^\s*\d+: (.+)$/gm)].map((m) => m[1].trim());
    const cause = causes.at(-1) ?? "the download failed";
    return `deno compile could not download Deno's runtime (denort) from dl.deno.land ` +
      `(${cause}): set DENORT_BIN to a local denort binary of Deno ${version} for ${triple} ` +
      `(unzipped from ${where}), or run 'deno task compile' where dl.deno.land is reachable`;
  }
  const lines = output.split("\n").map((l) => l.trim()).filter((l) => /error/i.test(l));
  return `deno compile failed: ${lines[0] ?? output.trim().split("\n").at(-1) ?? "no output"}`;
}

/** Runs the new binary with `--help`; deletes it and fails when it is not ours. */
async function checkBinary(path: string, expected: string): Promise<void> {
  const child = new Deno.Command(path, {
    args: ["--help"],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  const out = await child.output().finally(() => clearTimeout(timer));
  const text = new TextDecoder().decode(out.stdout);
  if (out.success && text.startsWith(expected)) return;
  await Deno.remove(path).catch(() => {});
  const denort = Deno.env.get("DENORT_BIN");
  throw new BuildError(
    `${shown(path)} does not run as this program (${
      JSON.stringify(text.split("\n")[0]?.slice(0, 60) ?? "")
    }, exit code ${out.code})` +
      (denort
        ? `: DENORT_BIN=${denort} is not the denort runtime of Deno ${Deno.version.deno} ` +
          `(deno itself does not work); use denort-${Deno.build.target}.zip of that release`
        : ""),
  );
}

/** A path relative to the current directory when it is inside it. */
function shown(path: string): string {
  const rel = relative(Deno.cwd(), path);
  return rel.startsWith("..") ? path : rel;
}

if (import.meta.main) {
  let code: number;
  try {
    code = await main(Deno.args);
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    console.error(`Error: ${message}`);
    code = error instanceof BuildError ? 1 : 2;
  }
  Deno.exit(code);
}
