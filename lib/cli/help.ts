/**
 * The `--help` texts. Each command's flags, their values and their defaults come from the
 * flag table (`flags.ts`); what is said around them (what the command does, its
 * environment, exit codes and examples) is written here, once per command.
 *
 * @module
 */

import { DEFAULT_CONFIG, type UploaderConfig } from "../../config.ts";
import { healthRef } from "../fleet/health.ts";
import { type CommandName, flagsOf, type FlagSpec, helpOf } from "./flags.ts";

/** Width of the help texts. */
const WIDTH = 88;

/**
 * Splits `text` into lines of at most `width` characters, at spaces; `(default:` stays
 * with the word after it.
 */
function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.replaceAll("(default: ", "(default:\u00a0").split(" ")) {
    if (line !== "" && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line === "" ? word : `${line} ${word}`;
  }
  if (line !== "") lines.push(line);
  return lines.map((l) => l.replaceAll("\u00a0", " "));
}

/** How a flag is named in the help: `-q, --quiet`, `--batch-size N`. */
function labelOf(flag: FlagSpec): string {
  const value = flag.value ? ` ${flag.value}` : "";
  return `${flag.short ? `-${flag.short}, ` : ""}--${flag.name}${value}`;
}

/**
 * The lines of one section of flags: each label, then its help and default wrapped in a
 * column after the longest label of the command.
 */
function flagLines(
  flags: readonly FlagSpec[],
  command: CommandName,
  config: UploaderConfig,
  column: number,
): string {
  const out: string[] = [];
  for (const flag of flags) {
    const shows = flag.shows ? ` (default: ${flag.shows(config)})` : "";
    const text = wrap(helpOf(flag, command) + shows, WIDTH - column);
    out.push(`  ${labelOf(flag).padEnd(column - 2)}${text[0]}`);
    for (const more of text.slice(1)) out.push(`${" ".repeat(column)}${more}`);
  }
  return out.join("\n");
}

/** The Modes and Options sections of a command. */
function sections(command: CommandName, config: UploaderConfig, modes?: string): string {
  const flags = flagsOf(command);
  const column = Math.max(...flags.map((f) => labelOf(f).length)) + 4;
  const modeFlags = flags.filter((f) => f.section === "mode");
  const parts: string[] = [];
  if (modeFlags.length > 0) {
    parts.push(`Modes:\n${modes ?? ""}${flagLines(modeFlags, command, config, column)}`);
  }
  parts.push(
    `Options:\n${flagLines(flags.filter((f) => f.section === "option"), command, config, column)}`,
  );
  return parts.join("\n\n");
}

/** The `--help` text of `deno task upload`. */
export function uploadHelp(config: UploaderConfig = DEFAULT_CONFIG): string {
  return `Upload test folders into PostgreSQL (Supabase), incrementally.

Usage: deno task upload <base_path> [options]
       deno task upload <base_path> --watch [--rescan-every S] [options]
       deno task upload --status [--db-path PATH] [--json]
       deno task upload --print-schema [--role NAME] [--isolate-devices]

Walks <base_path>, finds every folder that directly holds an image, ${config.statsFileName} or a
report (a PDF), records it in a local tracking database, and uploads new or changed
folders in batches through psql. Unchanged folders are not read again; a re-run after an
interruption resumes where the last one stopped.

${sections("upload", config, "  (default)            scan, then upload new and changed folders\n")}

Paths: a relative path means the directory the command was typed in.

Environment:
  SUPABASE_DB_URL, DATABASE_URL   target URL (keeps the password out of argv and history)
  PGHOST, PGSERVICE, PGPASSWORD   libpq's own settings, used when no URL is given
  DEVICE_ID, DEVICE_NAME, DEVICE_TYPE   this device's identity (without DEVICE_ID: the
                                  tracking database's, else the one the folders' markers
                                  record, else one made from the machine id; without
                                  name or type: those the server holds for the device)
  ${envDefaults("upload")}   defaults for the flags
  UPLOAD_IMAGES_TO, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL
                                  object storage for --objects-to
  Precedence: flag, then environment, then config.ts.

Exit codes:
  0 all done   1 some folders failed   2 usage or configuration error
  3 target unreachable or locked   130 interrupted (run again to resume)

Examples:
  deno task upload examples/data
  SUPABASE_DB_URL="$(cat ~/.config/uploader/url)" deno task upload /media/usb/data --parallel 8
  deno task upload data/ --json --quiet | jq -c 'select(.event=="folder_failed")'
`;
}

/** The environment variables that give a command's config.ts settings, as a list. */
function envDefaults(command: CommandName): string {
  return flagsOf(command).filter((f) => f.config && f.env).map((f) => f.env).join(", ");
}

/** The `--help` text of `deno task quick`. */
export function quickHelp(config: UploaderConfig = DEFAULT_CONFIG): string {
  return `Upload one or more test folders now, without scanning a tree.

Usage: deno task quick <folder>... [options]
       <command printing folder paths> | deno task quick - [options]

Uploads each named folder (one that directly holds an image, ${config.statsFileName} or a
report) as one row, through the same write path, target and tracking database as
'deno task upload'. With '-' as the only folder, paths are read from stdin, one per
line, and uploaded as they arrive. A folder given twice is uploaded once; a path that
is missing, not a directory or not an upload unit fails alone. When the tracking
database exists, each folder is recorded in it, so 'deno task upload' does not send it
again; when it does not exist, it is not created.

${sections("quick", config)}

Environment:
  SUPABASE_DB_URL, DATABASE_URL   target URL (keeps the password out of argv and history)
  PGHOST, PGSERVICE, PGPASSWORD   libpq's own settings, used when no URL is given
  DEVICE_ID, DEVICE_NAME, DEVICE_TYPE   this device's identity (without DEVICE_ID: the
                                  tracking database's, else the one the named folders'
                                  markers record, else one derived from the machine id in
                                  /etc/machine-id, else from the host name)
  BATCH_SIZE, UPLOAD_DB_PATH      folders per upsert statement, tracking database
  Precedence: flag, then environment, then config.ts.

Paths, on the command line or stdin: a relative path means the directory the command
was typed in.

Exit codes:
  0 all done   1 some folders failed   2 usage or configuration error (or a running
  'deno task upload' holds the tracking database)   3 target unreachable or locked
  130 interrupted

Examples:
  deno task quick examples/data/Batch54
  deno task quick --base /media/usb/data /media/usb/data/Line2/Batch12 /media/usb/data/Line2/Batch13
  find /media/usb/data -newer last_run -name stats.json -printf '%h\\n' | deno task quick - --json
`;
}

/** The `--help` text of `deno task sql`. */
export function sqlHelp(config: UploaderConfig = DEFAULT_CONFIG): string {
  return `Open psql on the database the uploader writes to.

Usage: deno task sql [--db-url URL] [--db-path PATH] [psql arguments]

The target is resolved as for 'deno task upload': --db-url, else $SUPABASE_DB_URL, else
$DATABASE_URL, else libpq's PGHOST/PGSERVICE, else the embedded local database, which is
started for the length of the psql session. Other arguments (and all after '--') go to
psql unchanged; the exit code is psql's. A password in the URL reaches psql through its
environment, never its arguments.

${sections("sql", config)}

Examples:
  deno task sql
  deno task sql -c "select test_status, count(*) from device_test group by 1"
  deno task sql -At -c "select folder_key from device_test where test_status = 'failed'"
`;
}

/** The `--help` text of `deno task fleet`. */
export function fleetHelp(config: UploaderConfig = DEFAULT_CONFIG): string {
  return `Show every device's health, read from the server.

Usage: deno task fleet [--stale DURATION] [--json] [--db-url URL] [--db-path PATH]

Each upload (and a --watch about once a minute) records its device's health in
${
    healthRef(config.table).display
  }, beside ${config.table}: when it ran, how it ended, what it uploaded,
and the folders failing or pending in its tracking database. This prints one line
per device: when it was last seen (its last record or row), its last outcome, its
rows in ${config.table}, failing and pending folders, and how long since its last row
arrived, all measured on the server's clock. The target is resolved as for
'deno task upload'.

${sections("fleet", config)}

Exit codes:
  0 done (no device silent past --stale)   1 a device is silent past --stale
  2 usage or configuration error (no health table yet, a refused query)   3 target unreachable

Examples:
  deno task fleet
  deno task fleet --stale 24h || mail -s "a device is silent" lab@example.com < /dev/null
  deno task fleet --json | jq -r '.devices[] | select(.failed > 0) | .name'
`;
}
