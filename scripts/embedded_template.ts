/**
 * `deno task embedded-template`: remakes lib/target/embedded_template.tar.br, the empty database
 * every new embedded database is unpacked from (see lib/target/embedded_template.ts). Run it after
 * moving the `@electric-sql/pglite` pin in deno.json and commit the result.
 *
 * It runs PGlite's own initdb once in a temporary folder, starts PostgreSQL on it with the
 * embedded settings, shuts it down cleanly, and packs the folder with a manifest naming the
 * installed PGlite version and the folder's PG_VERSION. initdb in WebAssembly needs about
 * 600 MB of memory and the compression tens of seconds: this is a developer's step, never
 * a device's.
 *
 * @module
 */

import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { PGlite } from "@electric-sql/pglite";
import { embeddedStartParams } from "../lib/target/embedded.ts";
import {
  packTemplate,
  TEMPLATE_URL,
  type TemplateManifest,
} from "../lib/target/embedded_template.ts";

/** The version of the PGlite package this script loads, from its package.json. */
function installedPgliteVersion(): string {
  const entry = import.meta.resolve("@electric-sql/pglite");
  const packageJson = new URL("../package.json", entry);
  return JSON.parse(Deno.readTextFileSync(packageJson)).version;
}

async function main(): Promise<void> {
  const work = await Deno.makeTempDir({ prefix: "embedded_template_" });
  try {
    const dataDir = join(work, "pgdata");
    const db = await PGlite.create({ dataDir, startParams: embeddedStartParams() });
    await db.close();
    const manifest: TemplateManifest = {
      pglite: installedPgliteVersion(),
      postgres: Deno.readTextFileSync(join(dataDir, "PG_VERSION")).trim(),
    };
    const archive = packTemplate(dataDir, manifest);
    const out = fileURLToPath(TEMPLATE_URL);
    await Deno.writeFile(out, archive);
    console.log(
      `Wrote ${out}: ${archive.length} bytes (PGlite ${manifest.pglite}, PostgreSQL ${manifest.postgres})`,
    );
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}

if (import.meta.main) await main();
