/**
 * Every flag of every command, declared once: its name, the commands that take it, its
 * kind and range, the environment variable and config.ts field that give its default, and
 * its help line. Parsing (`parse.ts`), `--help` (`help.ts`) and the tests' flag lists are
 * made from this table; a new flag is one entry here plus the code that uses its value.
 *
 * @module
 */

import type { UploaderConfig } from "../../config.ts";

/** The commands whose flags are declared here. */
export type CommandName = "upload" | "quick" | "fleet" | "sql";

/** What a flag's value is. */
export type FlagKind = "boolean" | "integer" | "number" | "text" | "path" | "choice";

/** One flag. */
export interface FlagSpec {
  /** The long name, without dashes. */
  readonly name: string;
  /** A one-letter alias (`-q`). */
  readonly short?: string;
  /** Other long names that mean the same flag (an older name kept working). */
  readonly aliases?: readonly string[];
  /** The values a `choice` flag takes. */
  readonly choices?: readonly string[];
  /** The commands that take it. */
  readonly commands: readonly CommandName[];
  /** A mode of the command (modes exclude each other) or an option. */
  readonly section: "mode" | "option";
  readonly kind: FlagKind;
  /** What the help calls its value (`N`, `S`, `PATH`); none for a boolean. */
  readonly value?: string;
  /** Smallest and largest value of a number. */
  readonly min?: number;
  readonly max?: number;
  /** The setting in config.ts it overrides (flag over `env` over config.ts). */
  readonly config?: keyof UploaderConfig;
  /** The command setting it gives, when it is no config.ts field (default: the name in camelCase). */
  readonly key?: string;
  /** A boolean that turns its setting off (`--no-markers`: markers false). */
  readonly negate?: boolean;
  /** The environment variable that gives its default. */
  readonly env?: string;
  /** The default when neither the flag nor its environment variable gives one. */
  readonly fallback?: number | string;
  /** The default as the help shows it; `(default: ...)` is left out when absent. */
  readonly shows?: (config: UploaderConfig) => string;
  /** Another flag it needs. */
  readonly needs?: string;
  /** The hint for an empty value (text and path flags). */
  readonly emptyHint?: string;
  /** The help text, for every command or per command. */
  readonly help: string | Readonly<Partial<Record<CommandName, string>>>;
}

const UPLOAD = ["upload"] as const;
const BOTH = ["upload", "quick"] as const;
const ALL = ["upload", "quick", "fleet"] as const;
const TARGET = ["upload", "quick", "fleet", "sql"] as const;

/** Default number of images put at once (`--images-parallel`). */
export const DEFAULT_IMAGES_PARALLEL = 8;

/** Default seconds between full rescans in watch mode (`--rescan-every`). */
export const DEFAULT_RESCAN_EVERY_SECONDS = 300;

const TARGET_HELP = "target database (default: $SUPABASE_DB_URL, else $DATABASE_URL, else " +
  "libpq's PGHOST/PGSERVICE, else the embedded local database)";

/** The flags, in the order the help lists them. */
export const FLAGS: readonly FlagSpec[] = [
  {
    name: "verify",
    commands: UPLOAD,
    section: "mode",
    kind: "boolean",
    help: "before uploading, compare the tracker with this device's rows on the server: a row " +
      "deleted or changed there is sent again; a lost or new tracker is rebuilt (folders whose " +
      "row already holds their content are recorded, not sent); rows with no folder on disk are " +
      "reported (--status --json lists them), never deleted",
  },
  {
    name: "rebuild-tracker",
    commands: UPLOAD,
    section: "mode",
    kind: "boolean",
    help: "move the tracking database aside (one that is damaged) and rebuild it from the " +
      "server's rows, as --verify does for a new tracker: nothing is sent again for folders the " +
      "server holds",
  },
  {
    name: "scan-only",
    commands: UPLOAD,
    section: "mode",
    kind: "boolean",
    help: "scan and record; print new / changed / unchanged / missing / unreadable counts; " +
      "upload nothing",
  },
  {
    name: "dry-run",
    commands: UPLOAD,
    section: "mode",
    kind: "boolean",
    help: "scan, diff and build rows; report what would be uploaded; write nothing anywhere " +
      "(server, tracker, folders)",
  },
  {
    name: "status",
    commands: UPLOAD,
    section: "mode",
    kind: "boolean",
    help: "report from the tracking database: totals by status, recent batches with their rate, " +
      "failures (retried and given up), unreadable and missing folders (--json: the full lists)",
  },
  {
    name: "print-schema",
    commands: UPLOAD,
    section: "mode",
    kind: "boolean",
    help: "print the SQL that creates or upgrades the tables and grants a least-privilege " +
      "uploading role what it needs, for an owner to run once (psql or Supabase's SQL editor); " +
      "connects to nothing",
  },
  {
    name: "watch",
    commands: UPLOAD,
    section: "mode",
    kind: "boolean",
    help: "after the upload, keep running: upload each new or changed folder once it has " +
      "settled (file-system events, plus a full rescan every --rescan-every seconds); SIGTERM " +
      "stops it (exit 0)",
  },
  {
    name: "role",
    commands: UPLOAD,
    section: "mode",
    kind: "text",
    value: "NAME",
    needs: "print-schema",
    emptyHint: "--role names the role the printed SQL grants to",
    help: "with --print-schema: the role to grant to (default: uploader)",
  },
  {
    name: "isolate-devices",
    commands: UPLOAD,
    section: "mode",
    kind: "boolean",
    needs: "print-schema",
    help: "with --print-schema: also row-level security under which each device's own login " +
      "role (a member of --role) may write only the rows of the devices the owner assigns it " +
      "in device_roles",
  },
  {
    name: "base",
    commands: ["quick"],
    section: "option",
    kind: "path",
    value: "DIR",
    emptyHint:
      "--base names the folder the keys are relative to (the one 'deno task upload' scans)",
    help: "key each folder by its path relative to DIR ('/'-separated), as 'deno task upload " +
      "DIR' does; a folder outside DIR fails (default: the deepest base the tracking database " +
      "knows that holds the folder, else the folder's own name; a name-only key never " +
      "overwrites the row of another folder of that name)",
  },
  {
    name: "db-url",
    commands: TARGET,
    section: "option",
    kind: "text",
    value: "URL",
    emptyHint: "Give a postgresql:// URL, or leave the flag out for the embedded database",
    help: {
      upload: TARGET_HELP,
      quick: TARGET_HELP,
      fleet: TARGET_HELP,
      sql: "target database (default: as above)",
    },
  },
  {
    name: "db-path",
    commands: TARGET,
    section: "option",
    kind: "path",
    value: "PATH",
    config: "dbPath",
    env: "UPLOAD_DB_PATH",
    emptyHint: "--db-path takes the tracking database's file name",
    shows: (c) => c.dbPath,
    help: {
      upload: "tracking database file",
      quick: "tracking database file, used only when it exists; it also names the embedded " +
        "database's folder",
      fleet: "tracking database whose embedded database to read",
      sql: "tracking database whose embedded database to open",
    },
  },
  {
    name: "batch-size",
    commands: UPLOAD,
    section: "option",
    kind: "integer",
    value: "N",
    min: 1,
    max: 100_000,
    config: "batchSize",
    env: "BATCH_SIZE",
    shows: (c) => String(c.batchSize),
    help: "folders per upsert statement",
  },
  {
    name: "parallel",
    commands: UPLOAD,
    section: "option",
    kind: "integer",
    value: "N",
    min: 1,
    max: 64,
    config: "parallel",
    shows: (c) => String(c.parallel),
    help: "psql sessions writing at once",
  },
  {
    name: "max-retries",
    commands: UPLOAD,
    section: "option",
    kind: "integer",
    value: "N",
    min: 0,
    max: 1000,
    config: "maxRetries",
    env: "MAX_RETRIES",
    shows: (c) => String(c.maxRetries),
    help: "runs that retry a folder the server refused before it waits for a change",
  },
  {
    name: "min-age",
    commands: BOTH,
    section: "option",
    kind: "number",
    value: "S",
    min: 0,
    config: "minAgeSeconds",
    shows: (c) => String(c.minAgeSeconds),
    help: {
      upload: "seconds a folder's newest file must be old before it is uploaded; younger " +
        "folders are left for later",
      quick: "a folder whose newest file is younger than this is waited for (all such folders " +
        "at once) so it is not sent half done; one still changing after twice this long fails",
    },
  },
  {
    name: "give-up-after",
    commands: UPLOAD,
    section: "option",
    kind: "number",
    value: "S",
    min: 0,
    config: "giveUpAfterSeconds",
    shows: (c) => String(c.giveUpAfterSeconds),
    help: "stop with exit code 3 when the server, once reached, stays unreachable, or another " +
      "session keeps the table locked, this long",
  },
  {
    name: "connect-timeout",
    commands: UPLOAD,
    section: "option",
    kind: "number",
    value: "S",
    min: 0,
    config: "connectTimeoutSeconds",
    shows: (c) => String(c.connectTimeoutSeconds),
    help: "stop with exit code 3 when the server cannot be reached at all for this long, e.g. " +
      "a wrong host or port",
  },
  {
    name: "batch-delay",
    commands: UPLOAD,
    section: "option",
    kind: "number",
    value: "S",
    min: 0,
    config: "batchDelaySeconds",
    env: "BATCH_DELAY_SECONDS",
    shows: (c) => String(c.batchDelaySeconds),
    help: "pause between batches, for small shared databases",
  },
  {
    name: "no-markers",
    commands: BOTH,
    section: "option",
    kind: "boolean",
    key: "markers",
    negate: true,
    help: "do not write success.json / failed.json into folders",
  },
  {
    name: "ready-when",
    commands: BOTH,
    section: "option",
    kind: "text",
    value: "GLOB",
    config: "readyWhen",
    emptyHint: "Give a file-name pattern such as '*.pdf', or leave the flag out",
    shows: (c) => c.readyWhen === "" ? "off" : c.readyWhen,
    help: "a folder is complete once it holds a file matching GLOB (any case; e.g. '*.pdf', the " +
      "report the device writes last): until then it is held back, then sent once settled",
  },
  {
    name: "ready-timeout",
    commands: BOTH,
    section: "option",
    kind: "number",
    value: "S",
    min: 0,
    config: "readyTimeoutSeconds",
    shows: (c) => String(c.readyTimeoutSeconds),
    help: "with --ready-when: a folder still without its file this many seconds after its last " +
      "change is sent as it is, with test_status incomplete, and sent again once complete",
  },
  {
    name: "rescan-every",
    commands: UPLOAD,
    section: "option",
    kind: "number",
    value: "S",
    min: 1,
    key: "rescanEverySeconds",
    fallback: DEFAULT_RESCAN_EVERY_SECONDS,
    needs: "watch",
    shows: () => String(DEFAULT_RESCAN_EVERY_SECONDS),
    help: "with --watch: seconds between full rescans",
  },
  {
    name: "objects-to",
    aliases: ["images-to"],
    key: "imagesTo",
    commands: BOTH,
    section: "option",
    kind: "text",
    value: "URL",
    env: "UPLOAD_IMAGES_TO",
    emptyHint: "Give the bucket and prefix as s3://BUCKET/PREFIX",
    shows: () => "$UPLOAD_IMAGES_TO, else off",
    help: {
      upload: "also store every image and report (PDF) in S3-compatible object storage " +
        "(Supabase Storage's S3 endpoint, MinIO, AWS), at URL s3://BUCKET/PREFIX, under " +
        "PREFIX/<device_id>/<folder>/<file>, before the folder's row, which records the " +
        "images' keys (image_objects) and the report's URL (pdf_url); --images-to is an alias " +
        "(credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL)",
      quick: "also store the images and reports in S3-compatible object storage at " +
        "s3://BUCKET/PREFIX, as 'deno task upload' does; --images-to is an alias",
    },
  },
  {
    name: "images-as",
    commands: BOTH,
    section: "option",
    kind: "choice",
    choices: ["names", "urls"],
    value: "AS",
    config: "imagesAs",
    shows: (c) => c.imagesAs,
    help:
      "what a row's images holds: names, the file names; urls, the stored objects' URLs in the " +
      "--url-form (as the authors' REST uploader wrote them); image_objects holds the keys " +
      "either way",
  },
  {
    name: "url-form",
    commands: BOTH,
    section: "option",
    kind: "choice",
    choices: ["public", "key"],
    value: "FORM",
    config: "urlForm",
    shows: (c) => c.urlForm,
    help: "how pdf_url (and images with --images-as urls) name a stored object: public, its " +
      "public URL (Supabase: <project>/storage/v1/object/public/<bucket>/<key>; another " +
      "store: <endpoint>/<bucket>/<key>); key, the object key alone, for private buckets",
  },
  {
    name: "images-parallel",
    commands: BOTH,
    section: "option",
    kind: "integer",
    value: "N",
    min: 1,
    max: 64,
    fallback: DEFAULT_IMAGES_PARALLEL,
    shows: () => String(DEFAULT_IMAGES_PARALLEL),
    help: "images put at once",
  },
  {
    name: "moved-from",
    commands: UPLOAD,
    section: "option",
    kind: "path",
    value: "OLD",
    emptyHint: "--moved-from takes the base folder's old path",
    shows: () => "none",
    help: "the base folder used to be OLD (renamed, mounted elsewhere): its tracked folders " +
      "move to <base_path> first, so none is sent again",
  },
  {
    name: "adopt-device",
    commands: UPLOAD,
    section: "option",
    kind: "boolean",
    shows: () => "off",
    help: "when no device id is known (no DEVICE_ID, a new tracking database, none in the " +
      "folders' success.json) and the server holds this tree's rows under one other device " +
      "id, take that id over instead of stopping with exit code 2",
  },
  {
    name: "stale",
    commands: ["fleet"],
    section: "option",
    kind: "text",
    value: "DURATION",
    emptyHint: "Give a duration such as 24h, 90m, 2d or a number of seconds",
    shows: () => "off",
    help: "list only the devices silent for longer than DURATION (24h, 90m, 1h30m, 2d, or " +
      "seconds) and exit 1 when there is one",
  },
  {
    name: "json",
    commands: ALL,
    section: "option",
    kind: "boolean",
    help: {
      upload: "one JSON event per line on stdout; human output on stderr",
      quick: "one JSON event per line on stdout; human output on stderr",
      fleet: "one JSON document on stdout: every field of each device listed",
    },
  },
  {
    name: "quiet",
    short: "q",
    commands: BOTH,
    section: "option",
    kind: "boolean",
    help: {
      upload: "no progress; errors and a failing summary still print",
      quick: "only errors and a failing summary",
    },
  },
  {
    name: "help",
    short: "h",
    commands: ALL,
    section: "option",
    kind: "boolean",
    help: "this text",
  },
  {
    // psql's own -h is the host: `deno task sql` passes it on.
    name: "help",
    commands: ["sql"],
    section: "option",
    kind: "boolean",
    help: "this text ('psql --help' lists psql's own options)",
  },
];

/** The flags a command takes, in the help's order. */
export function flagsOf(command: CommandName): FlagSpec[] {
  return FLAGS.filter((f) => f.commands.includes(command));
}

/** The help text of a flag for a command. */
export function helpOf(flag: FlagSpec, command: CommandName): string {
  return typeof flag.help === "string" ? flag.help : flag.help[command] ?? "";
}

/**
 * The setting a flag gives, as a command's field: its `key`, else its name in camelCase.
 *
 * @example
 * ```ts
 * keyOf({ name: "dry-run" } as FlagSpec); // "dryRun"
 * ```
 */
export function keyOf(flag: Pick<FlagSpec, "name" | "key">): string {
  return flag.key ?? flag.name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}
