/**
 * The small-device run: a first upload of a generated tree (default 100,000 folders,
 * nested) with the upload task's command and default flags (markers on), the uploader and
 * everything it starts (its psql sessions) held to a memory limit by a cgroup, against a
 * private PostgreSQL 15 outside that limit. Passes when the uploader exits 0 and the table
 * holds exactly one row per upload unit.
 *
 * ```sh
 * deno run -A bench/small_device.ts --cgroup /sys/fs/cgroup/<new group> [--limit-mb 256]
 *                                   [--folders 100000] [--layout nested|flat] [--tree DIR]
 * ```
 *
 * `--cgroup` names a cgroup directory this script may write: cgroup v2 (`memory.max`,
 * `memory.peak`, `memory.events`) or a v1 memory cgroup (`memory.limit_in_bytes`,
 * `memory.memsw.limit_in_bytes` when swap accounting exists, `memory.max_usage_in_bytes`,
 * `memory.failcnt`). The uploader enters it before it starts (`sh -c 'echo $$ >
 * cgroup.procs; exec deno ...'`); the limit counts its page cache too, as a device's would.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { generateTree } from "../support/tree.ts";
import { startPostgres } from "../support/postgres.ts";
import { psqlExec } from "./floor.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const DEVICE_ID = "6be4c000-0000-4000-8000-00000000be01";

/** Reads a cgroup file, or null when this cgroup version has none. */
function readCgroup(dir: string, name: string): string | null {
  try {
    return Deno.readTextFileSync(join(dir, name)).trim();
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
}

/** Sets the limit in whichever version the cgroup is; returns what it reports afterwards. */
function limitCgroup(dir: string, bytes: number): { version: 1 | 2; peak: () => string } {
  if (readCgroup(dir, "memory.max") !== null) {
    Deno.writeTextFileSync(join(dir, "memory.max"), String(bytes));
    if (readCgroup(dir, "memory.swap.max") !== null) {
      Deno.writeTextFileSync(join(dir, "memory.swap.max"), "0");
    }
    return {
      version: 2,
      peak: () =>
        `memory.peak ${readCgroup(dir, "memory.peak")}; memory.events ${
          (readCgroup(dir, "memory.events") ?? "").replace(/\n/g, ", ")
        }`,
    };
  }
  if (readCgroup(dir, "memory.limit_in_bytes") === null) {
    throw new Error(`${dir} is not a memory cgroup (no memory.max, no memory.limit_in_bytes)`);
  }
  Deno.writeTextFileSync(join(dir, "memory.limit_in_bytes"), String(bytes));
  if (readCgroup(dir, "memory.memsw.limit_in_bytes") !== null) {
    Deno.writeTextFileSync(join(dir, "memory.memsw.limit_in_bytes"), String(bytes));
  }
  return {
    version: 1,
    peak: () =>
      `memory.max_usage_in_bytes ${readCgroup(dir, "memory.max_usage_in_bytes")}; ` +
      `memory.failcnt ${readCgroup(dir, "memory.failcnt")}; oom_control ${
        (readCgroup(dir, "memory.oom_control") ?? "").replace(/\n/g, ", ")
      }`,
  };
}

/** The upload task's `--v8-flags=...` from deno.json. */
function uploadTaskFlags(): string[] {
  const config = JSON.parse(Deno.readTextFileSync(join(ROOT, "deno.json")));
  const flags = String(config.tasks.upload).match(/--v8-flags=\S+/);
  return flags ? [flags[0]] : [];
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      cgroup: { type: "string" },
      "limit-mb": { type: "string", default: "256" },
      folders: { type: "string", default: "100000" },
      layout: { type: "string", default: "nested" },
      tree: { type: "string" },
    },
  });
  if (!values.cgroup) {
    console.error("Error: --cgroup DIR is required: a cgroup directory this script may write");
    return 2;
  }
  const folders = Number(values.folders);
  const limitMb = Number(values["limit-mb"]);
  const work = Deno.makeTempDirSync({ prefix: "uploader_small_" });
  const cgroup = limitCgroup(values.cgroup, limitMb * 1024 * 1024);
  const tree = values.tree ?? join(work, "tree");
  const started = performance.now();
  const generated = generateTree(tree, { folders, nested: values.layout !== "flat" });
  console.error(
    `Tree: ${generated.units} units in ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );
  const pg = await startPostgres();
  try {
    const script = `echo $$ > '${join(values.cgroup, "cgroup.procs")}' && exec "$@"`;
    const args = [
      "-c",
      script,
      "sh",
      Deno.execPath(),
      "run",
      ...uploadTaskFlags(),
      "-A",
      join(ROOT, "scripts", "upload_manager.ts"),
      tree,
      "--db-path",
      join(work, "tracker.db"),
      "--json",
      "--quiet",
    ];
    const t0 = performance.now();
    const out = await new Deno.Command("sh", {
      args,
      env: { SUPABASE_DB_URL: pg.url, DEVICE_ID, DEVICE_NAME: "small", NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
      cwd: ROOT,
    }).output();
    const wall = (performance.now() - t0) / 1000;
    const rows = Number(
      (await psqlExec(pg.url, `select count(*) from device_test where device_id = '${DEVICE_ID}'`))
        .trim(),
    );
    const summary = new TextDecoder().decode(out.stdout).trim().split("\n").reverse()
      .map((l) => (l.startsWith("{") ? JSON.parse(l) : null))
      .find((e) => e?.event === "summary");
    const exact = rows === generated.units && summary?.uploaded === generated.units;
    console.log(
      [
        `limit: ${limitMb} MB (cgroup v${cgroup.version}, ${values.cgroup})`,
        `folders: ${folders} (${values.layout}), ${generated.units} units`,
        `exit: ${out.code}${out.signal ? ` (signal ${out.signal})` : ""}; wall ${
          wall.toFixed(1)
        } s`,
        `rows: ${rows}, uploaded ${summary?.uploaded}, failed ${summary?.failed}: ${
          exact ? "exact" : "NOT exact"
        }`,
        `cgroup: ${cgroup.peak()}`,
      ].join("\n"),
    );
    if (out.code !== 0) console.error(new TextDecoder().decode(out.stderr).slice(-3000));
    return out.code === 0 && exact ? 0 : 1;
  } finally {
    await pg.close();
    Deno.removeSync(work, { recursive: true });
  }
}

if (import.meta.main) Deno.exit(await main());
