/**
 * Command-line parsing shared by the scripts: flags -> settings, with precedence flag >
 * environment variable > config.ts. Pure: takes argv and the environment, returns
 * settings or throws a usage error with a one-line hint.
 *
 * @module
 */

import { resolve } from "node:path";
import { parseArgs, type ParseArgsConfig } from "node:util";
import { DEFAULT_CONFIG, type UploaderConfig } from "../../config.ts";
import { EXIT, exitCodeFor, messageOf, UploadError } from "../core/errors.ts";
import { redactUrl } from "../target/target.ts";
import type { Connector } from "../target/connect.ts";
import { oneLine } from "./progress.ts";
import {
  type ObjectStore,
  parseImagesTo,
  type RetryEvent,
  storeFromEnv,
} from "../objects/storage.ts";

/** Settings of `deno task upload`. Paths are absolute (resolved from the caller's directory). */
export interface UploadCommand {
  basePath: string | null;
  scanOnly: boolean;
  status: boolean;
  dryRun: boolean;
  /** Keep running: upload folders as they appear (`--watch`). */
  watch: boolean;
  /** Seconds between full rescans in watch mode (`--rescan-every`). */
  rescanEverySeconds: number;
  /** `--moved-from OLD`: the base used to live at OLD; move its tracked folders first. */
  movedFrom: string | null;
  /** `--print-schema`: print the SQL an owner runs once, and exit. */
  printSchema: boolean;
  /** `--role NAME`: the uploading role `--print-schema` grants to. */
  role: string | null;
  /** `--isolate-devices`: `--print-schema` adds per-device write isolation. */
  isolateDevices: boolean;
  /** `--images-to s3://BUCKET/PREFIX` (else `$UPLOAD_IMAGES_TO`), or null. */
  imagesTo: string | null;
  /** `--images-parallel N`: images put at once. */
  imagesParallel: number;
  /** `--verify`: reconcile with the server's rows before uploading. */
  verify: boolean;
  /**
   * `--adopt-device`: with no device id known (no DEVICE_ID, a new tracker), take over the
   * one other id the server holds this tree's rows under, instead of stopping.
   */
  adoptDevice: boolean;
  /**
   * `--rebuild-tracker`: move the tracking database aside (a damaged one) and rebuild it
   * from the server's rows, as `--verify` does with a new tracker. Implies `verify`.
   */
  rebuildTracker: boolean;
  markers: boolean;
  json: boolean;
  quiet: boolean;
  help: boolean;
  dbUrl?: string;
  config: UploaderConfig;
}

type Env = Record<string, string | undefined>;

/** The flags of `deno task upload`. */
const UPLOAD_FLAGS = {
  "scan-only": { type: "boolean" },
  status: { type: "boolean" },
  "dry-run": { type: "boolean" },
  "batch-size": { type: "string" },
  "max-retries": { type: "string" },
  "db-path": { type: "string" },
  "db-url": { type: "string" },
  parallel: { type: "string" },
  "min-age": { type: "string" },
  "give-up-after": { type: "string" },
  "connect-timeout": { type: "string" },
  "batch-delay": { type: "string" },
  "no-markers": { type: "boolean" },
  watch: { type: "boolean" },
  "rescan-every": { type: "string" },
  "moved-from": { type: "string" },
  "print-schema": { type: "boolean" },
  role: { type: "string" },
  "isolate-devices": { type: "boolean" },
  "images-to": { type: "string" },
  "images-parallel": { type: "string" },
  verify: { type: "boolean" },
  "adopt-device": { type: "boolean" },
  "rebuild-tracker": { type: "boolean" },
  json: { type: "boolean" },
  quiet: { type: "boolean", short: "q" },
  help: { type: "boolean", short: "h" },
} as const;

/** Default number of images put at once (`--images-parallel`). */
export const DEFAULT_IMAGES_PARALLEL = 8;

/** `--images-to` and `--images-parallel`, checked; the environment's `UPLOAD_IMAGES_TO` otherwise. */
function imagesSettings(
  values: { "images-to"?: string | boolean; "images-parallel"?: string | boolean },
  env: Env,
): { imagesTo: string | null; imagesParallel: number } {
  const flag = values["images-to"];
  if (flag === "") {
    throw new UploadError("usage", "Empty value for --images-to", {
      hint: "Give the bucket and prefix as s3://BUCKET/PREFIX",
    });
  }
  const imagesTo = typeof flag === "string" ? flag : env.UPLOAD_IMAGES_TO || null;
  const parallel = values["images-parallel"];
  const imagesParallel = typeof parallel === "string"
    ? parseNumber("--images-parallel", parallel, { min: 1, max: 64, integer: true })
    : DEFAULT_IMAGES_PARALLEL;
  if (imagesTo !== null) parseImagesTo(imagesTo); // a malformed value is a usage error now
  return { imagesTo, imagesParallel };
}

/** Default seconds between full rescans in watch mode. */
export const DEFAULT_RESCAN_EVERY_SECONDS = 300;

/**
 * A path as the user meant it: relative paths are relative to the directory the command
 * was typed in. `deno task` runs scripts from the project root and passes the caller's
 * directory in `INIT_CWD`; a script run directly has it as its own working directory.
 *
 * @example
 * ```ts
 * fromCaller("data", { INIT_CWD: "/home/lab" }); // "/home/lab/data"
 * ```
 */
export function fromCaller(path: string, env: Env): string {
  return resolve(env.INIT_CWD || Deno.cwd(), path);
}

/**
 * Parses a whole number or decimal flag value.
 *
 * @throws {UploadError} kind `usage` naming the flag and the accepted range.
 */
export function parseNumber(
  flag: string,
  text: string,
  options: { min: number; max?: number; integer?: boolean },
): number {
  const value = Number(text);
  const ok = text.trim() !== "" && Number.isFinite(value) &&
    (!options.integer || Number.isInteger(value)) && value >= options.min &&
    (options.max === undefined || value <= options.max);
  if (!ok) {
    const kind = options.integer ? "a whole number" : "a number";
    const range = options.max === undefined
      ? `>= ${options.min}`
      : `between ${options.min} and ${options.max}`;
    throw new UploadError("usage", `Invalid value for ${flag}: "${text}"`, {
      hint: `${flag} takes ${kind} ${range}`,
    });
  }
  return value;
}

/** Wraps node:util parseArgs so its errors become usage errors with a hint. */
export function parseFlags<T extends NonNullable<ParseArgsConfig["options"]>>(
  argv: string[],
  options: T,
  command: string,
) {
  try {
    return parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    const unknown = /Unknown option '([^']+)'/.exec(message);
    // node:util's message for `--flag -1` spans three lines; keep one line and one hint.
    const ambiguous = /Option '([^']+)' argument is ambiguous/.exec(message);
    if (ambiguous) {
      throw new UploadError("usage", `Missing or ambiguous value for ${ambiguous[1]}`, {
        hint: `Write ${ambiguous[1]}=VALUE for a value that starts with a dash`,
      });
    }
    throw new UploadError(
      "usage",
      unknown ? `Unknown option ${unknown[1]}` : message.split("\n")[0].replace(/\.$/, ""),
      { hint: `Run '${command} --help' for the list of options` },
    );
  }
}

/**
 * Parses `deno task upload` arguments into settings.
 *
 * @throws {UploadError} kind `usage` for unknown flags, bad values or a missing base path.
 */
export function parseUploadCommand(
  argv: string[],
  env: Env,
  defaults: UploaderConfig = DEFAULT_CONFIG,
): UploadCommand {
  const command = "deno task upload";
  const { values, positionals } = parseFlags(argv, UPLOAD_FLAGS, command);
  const config = configFromEnv(defaults, env);
  const num = (flag: keyof typeof UPLOAD_FLAGS, opts: Parameters<typeof parseNumber>[2]) => {
    const text = values[flag];
    return typeof text === "string" ? parseNumber(`--${flag}`, text, opts) : undefined;
  };
  config.batchSize = num("batch-size", { min: 1, max: 100_000, integer: true }) ??
    config.batchSize;
  config.maxRetries = num("max-retries", { min: 0, max: 1000, integer: true }) ??
    config.maxRetries;
  config.parallel = num("parallel", { min: 1, max: 64, integer: true }) ?? config.parallel;
  config.minAgeSeconds = num("min-age", { min: 0 }) ?? config.minAgeSeconds;
  config.giveUpAfterSeconds = num("give-up-after", { min: 0 }) ?? config.giveUpAfterSeconds;
  config.connectTimeoutSeconds = num("connect-timeout", { min: 0 }) ??
    config.connectTimeoutSeconds;
  config.batchDelaySeconds = num("batch-delay", { min: 0 }) ?? config.batchDelaySeconds;
  const emptyHints = {
    "db-path": "--db-path takes the tracking database's file name",
    "db-url": "Give a postgresql:// URL, or leave the flag out for the embedded database",
    "moved-from": "--moved-from takes the base folder's old path",
  } as const;
  for (const [flag, hint] of Object.entries(emptyHints)) {
    if (values[flag as keyof typeof emptyHints] === "") usage(`Empty value for --${flag}`, hint);
  }
  if (typeof values["db-path"] === "string") config.dbPath = values["db-path"];
  config.dbPath = fromCaller(config.dbPath, env);
  const basePath = checkUploadModes(values, positionals, command);
  const rescan = num("rescan-every", { min: 1 });
  if (rescan !== undefined && values.watch !== true) {
    usage("--rescan-every needs --watch", `Run '${command} --help' for what --watch does`);
  }
  const movedFrom = values["moved-from"];
  return {
    basePath: basePath === null ? null : fromCaller(basePath, env),
    scanOnly: values["scan-only"] === true,
    status: values.status === true,
    dryRun: values["dry-run"] === true,
    watch: values.watch === true,
    rescanEverySeconds: rescan ?? DEFAULT_RESCAN_EVERY_SECONDS,
    movedFrom: typeof movedFrom === "string" ? fromCaller(movedFrom, env) : null,
    printSchema: values["print-schema"] === true,
    role: typeof values.role === "string" ? values.role : null,
    isolateDevices: values["isolate-devices"] === true,
    verify: values.verify === true || values["rebuild-tracker"] === true,
    adoptDevice: values["adopt-device"] === true,
    rebuildTracker: values["rebuild-tracker"] === true,
    ...imagesSettings(values, env),
    markers: values["no-markers"] !== true,
    json: values.json === true,
    quiet: values.quiet === true,
    help: values.help === true,
    dbUrl: typeof values["db-url"] === "string" ? values["db-url"] : undefined,
    config,
  };
}

/** Throws a usage error (exit 2) with a one-line hint. */
function usage(message: string, hint: string): never {
  throw new UploadError("usage", message, { hint });
}

/**
 * Checks that the modes of `deno task upload` go together and the base path is there when
 * one is needed; returns the base path as given (or null).
 */
function checkUploadModes(
  values: Record<string, string | boolean | undefined>,
  positionals: string[],
  command: string,
): string | null {
  const on = (flag: string) => values[flag] === true;
  // --rebuild-tracker is --verify on a new tracker: the two go together.
  const verify = on("rebuild-tracker") ? "rebuild-tracker" : "verify";
  const modes = ["print-schema", "status", "scan-only", "dry-run", "watch", verify]
    .filter(on).map((m) => `--${m}`);
  const help = on("help");
  if (!help && modes.length > 1) {
    usage(`${modes.join(" and ")} cannot be combined`, `Run '${command} --help' for each mode`);
  }
  if (positionals.length > 1) {
    usage(
      `Expected one base path, got ${positionals.length}`,
      `Quote paths with spaces: ${command} "my data/"`,
    );
  }
  const basePath = positionals[0] ?? null;
  if (on("print-schema") && basePath !== null) {
    usage(
      "--print-schema takes no base path",
      `Run '${command} --print-schema [--role NAME]' and give its output to the owner`,
    );
  }
  if (typeof values.role === "string" && !on("print-schema")) {
    usage("--role needs --print-schema", "--role names the role the printed SQL grants to");
  }
  if (on("isolate-devices") && !on("print-schema")) {
    usage(
      "--isolate-devices needs --print-schema",
      "It adds per-device row-level security to the SQL --print-schema prints",
    );
  }
  if (!help && !on("status") && !on("print-schema") && basePath === null) {
    usage(
      "Missing the base path to upload",
      `Usage: ${command} <base_path> [options]; '${command} --help' for more`,
    );
  }
  if (basePath !== null && basePath.trim() === "") {
    usage(
      "Empty base path",
      "Give the folder that holds the test folders; '.' for the current directory",
    );
  }
  return basePath;
}

/** Applies the environment's settings over the defaults. */
export function configFromEnv(defaults: UploaderConfig, env: Env): UploaderConfig {
  const config: UploaderConfig = { ...defaults };
  const n = (name: string, opts: Parameters<typeof parseNumber>[2]) => {
    const text = env[name];
    if (text === undefined || text === "") return undefined;
    try {
      return parseNumber(name, text, opts);
    } catch (error) {
      throw new UploadError("config", `Invalid environment variable ${name}="${text}"`, {
        hint: (error as UploadError).hint?.replace(name, name),
      });
    }
  };
  config.batchSize = n("BATCH_SIZE", { min: 1, integer: true }) ?? config.batchSize;
  config.maxRetries = n("MAX_RETRIES", { min: 0, integer: true }) ?? config.maxRetries;
  config.batchDelaySeconds = n("BATCH_DELAY_SECONDS", { min: 0 }) ?? config.batchDelaySeconds;
  if (env.DEVICE_ID) config.deviceId = env.DEVICE_ID;
  if (env.DEVICE_NAME) config.deviceName = env.DEVICE_NAME;
  if (env.DEVICE_TYPE) config.deviceType = env.DEVICE_TYPE;
  if (env.UPLOAD_DB_PATH) config.dbPath = env.UPLOAD_DB_PATH;
  if (
    config.deviceId &&
    !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(config.deviceId)
  ) {
    throw new UploadError("config", `DEVICE_ID is not a UUID: "${config.deviceId}"`, {
      hint: "Set DEVICE_ID to a UUID such as 3f0e6a9e-8d4b-4a59-9d7e-2b1c5a7f9e10, or unset it",
    });
  }
  return config;
}

/** The `--help` text of `deno task upload`. */
export function uploadHelp(config: UploaderConfig = DEFAULT_CONFIG): string {
  return `Upload test folders into PostgreSQL (Supabase), incrementally.

Usage: deno task upload <base_path> [options]
       deno task upload <base_path> --watch [--rescan-every S] [options]
       deno task upload --status [--db-path PATH] [--json]
       deno task upload --print-schema [--role NAME] [--isolate-devices]

Walks <base_path>, finds every folder that directly holds an image or ${config.statsFileName},
records it in a local tracking database, and uploads new or changed folders in batches
through psql. Unchanged folders are not read again; a re-run after an interruption
resumes where the last one stopped.

Modes:
  (default)            scan, then upload new and changed folders
  --verify             before uploading, compare the tracker with this device's rows
                       on the server: a row deleted or changed there is sent again; a
                       lost or new tracker is rebuilt (folders whose row already holds
                       their content are recorded, not sent); rows with no folder on
                       disk are reported (--status --json lists them), never deleted
  --rebuild-tracker    move the tracking database aside (one that is damaged) and
                       rebuild it from the server's rows, as --verify does for a new
                       tracker: nothing is sent again for folders the server holds
  --scan-only          scan and record; print new / changed / unchanged / missing /
                       unreadable counts; upload nothing
  --dry-run            scan, diff and build rows; report what would be uploaded;
                       write nothing anywhere (server, tracker, folders)
  --status             report from the tracking database: totals by status, recent
                       batches with their rate, failures (retried and given up),
                       unreadable and missing folders (--json: the full lists)
  --print-schema       print the SQL that creates or upgrades the tables and grants a
                       least-privilege uploading role what it needs, for an owner to
                       run once (psql or Supabase's SQL editor); connects to nothing
  --role NAME          with --print-schema: the role to grant to (default: uploader)
  --isolate-devices    with --print-schema: also row-level security under which each
                       device's own login role (a member of --role) may write only the
                       rows of the devices the owner assigns it in device_roles

Options:
  --db-url URL         target database (default: $SUPABASE_DB_URL, else $DATABASE_URL,
                       else libpq's PGHOST/PGSERVICE, else the embedded local database)
  --db-path PATH       tracking database file (default: ${config.dbPath})
  --batch-size N       folders per upsert statement (default: ${config.batchSize})
  --parallel N         psql sessions writing at once (default: ${config.parallel})
  --max-retries N      runs that retry a folder the server refused before it waits
                       for a change (default: ${config.maxRetries})
  --min-age S          seconds a folder's newest file must be old before it is
                       uploaded; younger folders are left for later (default: ${config.minAgeSeconds})
  --give-up-after S    stop with exit code 3 when the server, once reached, stays
                       unreachable, or another session keeps the table locked, this
                       long (default: ${config.giveUpAfterSeconds})
  --connect-timeout S  stop with exit code 3 when the server cannot be reached at all
                       for this long, e.g. a wrong host or port (default: ${config.connectTimeoutSeconds})
  --batch-delay S      pause between batches, for small shared databases (default: ${config.batchDelaySeconds})
  --no-markers         do not write ${config.successMarker} / ${config.failedMarker} into folders
  --watch              after the upload, keep running: upload each new or changed
                       folder once it has settled (file-system events, plus a full
                       rescan every --rescan-every seconds); SIGTERM stops it (exit 0)
  --rescan-every S     with --watch: seconds between full rescans (default: ${DEFAULT_RESCAN_EVERY_SECONDS})
  --images-to URL      also store every image in S3-compatible object storage (Supabase
                       Storage's S3 endpoint, MinIO, AWS), at URL s3://BUCKET/PREFIX,
                       before the folder's row, which records the object keys
                       (credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
                       AWS_REGION, AWS_ENDPOINT_URL)
                       (default: $UPLOAD_IMAGES_TO, else off)
  --images-parallel N  images put at once (default: ${DEFAULT_IMAGES_PARALLEL})
  --moved-from OLD     the base folder used to be OLD (renamed, mounted elsewhere): its
                       tracked folders move to <base_path> first, so none is sent
                       again (default: none)
  --adopt-device       when no device id is known (no DEVICE_ID, a new tracking
                       database, none in the folders' success.json) and the server
                       holds this tree's rows under one other device id, take that id
                       over instead of stopping with exit code 2 (default: off)
  --json               one JSON event per line on stdout; human output on stderr
  -q, --quiet          no progress; errors and a failing summary still print
  -h, --help           this text

Paths: a relative path means the directory the command was typed in.

Environment:
  SUPABASE_DB_URL, DATABASE_URL   target URL (keeps the password out of argv and history)
  PGHOST, PGSERVICE, PGPASSWORD   libpq's own settings, used when no URL is given
  DEVICE_ID, DEVICE_NAME, DEVICE_TYPE   this device's identity (without DEVICE_ID: the
                                  tracking database's, else the one the folders' markers
                                  record, else one made from the machine id; without
                                  name or type: those the server holds for the device)
  BATCH_SIZE, MAX_RETRIES, BATCH_DELAY_SECONDS, UPLOAD_DB_PATH   defaults for the flags
  UPLOAD_IMAGES_TO, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL
                                  object storage for --images-to
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

/** Settings of `deno task quick`. */
export interface QuickCommand {
  /** Folders named on the command line (empty when {@linkcode QuickCommand.stdin} is set). */
  paths: string[];
  /** Read folder paths from stdin, one per line (the only argument was `-`). */
  stdin: boolean;
  /** `--base DIR`: keys are relative to it; null keys each folder by its own name. */
  base: string | null;
  /** `--images-to s3://BUCKET/PREFIX` (else `$UPLOAD_IMAGES_TO`), or null. */
  imagesTo: string | null;
  /** `--images-parallel N`: images put at once. */
  imagesParallel: number;
  markers: boolean;
  json: boolean;
  quiet: boolean;
  help: boolean;
  dbUrl?: string;
  config: UploaderConfig;
}

/** The flags of `deno task quick`. */
const QUICK_FLAGS = {
  base: { type: "string" },
  "images-to": { type: "string" },
  "images-parallel": { type: "string" },
  "db-path": { type: "string" },
  "db-url": { type: "string" },
  "min-age": { type: "string" },
  "no-markers": { type: "boolean" },
  json: { type: "boolean" },
  quiet: { type: "boolean", short: "q" },
  help: { type: "boolean", short: "h" },
} as const;

/**
 * Parses `deno task quick` arguments into settings.
 *
 * @throws {UploadError} kind `usage` for unknown flags, bad values, no folder, or `-`
 * mixed with folder paths.
 */
export function parseQuickCommand(
  argv: string[],
  env: Env,
  defaults: UploaderConfig = DEFAULT_CONFIG,
): QuickCommand {
  const command = "deno task quick";
  const { values, positionals } = parseFlags(argv, QUICK_FLAGS, command);
  const config = configFromEnv(defaults, env);
  if (typeof values["min-age"] === "string") {
    config.minAgeSeconds = parseNumber("--min-age", values["min-age"], { min: 0 });
  }
  for (const flag of ["db-path", "db-url", "base"] as const) {
    if (values[flag] === "") {
      throw new UploadError("usage", `Empty value for --${flag}`, {
        hint: `Run '${command} --help' for what --${flag} takes`,
      });
    }
  }
  if (typeof values["db-path"] === "string") config.dbPath = values["db-path"];
  config.dbPath = fromCaller(config.dbPath, env);
  const help = values.help === true;
  const stdin = positionals.length === 1 && positionals[0] === "-";
  if (!help && !stdin && positionals.includes("-")) {
    throw new UploadError(
      "usage",
      "'-' (read folders from stdin) must be the only folder argument",
      {
        hint:
          `Either name the folders, or pipe them in: find data -name stats.json -printf '%h\\n' | ${command} -`,
      },
    );
  }
  if (!help && positionals.length === 0) {
    throw new UploadError("usage", "Missing the folder(s) to upload", {
      hint: `Usage: ${command} <folder>... | -  [options]; '${command} --help' for more`,
    });
  }
  return {
    paths: stdin ? [] : positionals.map((p) => fromCaller(p, env)),
    stdin,
    base: typeof values.base === "string" ? fromCaller(values.base, env) : null,
    ...imagesSettings(values, env),
    markers: values["no-markers"] !== true,
    json: values.json === true,
    quiet: values.quiet === true,
    help,
    dbUrl: typeof values["db-url"] === "string" ? values["db-url"] : undefined,
    config,
  };
}

/** The `--help` text of `deno task quick`. */
export function quickHelp(config: UploaderConfig = DEFAULT_CONFIG): string {
  return `Upload one or more test folders now, without scanning a tree.

Usage: deno task quick <folder>... [options]
       <command printing folder paths> | deno task quick - [options]

Uploads each named folder (one that directly holds an image or ${config.statsFileName}) as one
row, through the same write path, target and tracking database as 'deno task upload'.
With '-' as the only folder, paths are read from stdin, one per line, and uploaded as
they arrive. A folder given twice is uploaded once; a path that is missing, not a
directory or not an upload unit fails alone. When the tracking database exists, each
folder is recorded in it, so 'deno task upload' does not send it again; when it does
not exist, it is not created.

Options:
  --base DIR           key each folder by its path relative to DIR ('/'-separated), as
                       'deno task upload DIR' does; a folder outside DIR fails
                       (default: the deepest base the tracking database knows that
                       holds the folder, else the folder's own name; a name-only key
                       never overwrites the row of another folder of that name)
  --db-url URL         target database (default: $SUPABASE_DB_URL, else $DATABASE_URL,
                       else libpq's PGHOST/PGSERVICE, else the embedded local database)
  --db-path PATH       tracking database file, used only when it exists; it also names
                       the embedded database's folder (default: ${config.dbPath})
  --min-age S          a folder whose newest file is younger than this is waited for
                       (all such folders at once) so it is not sent half done; one
                       still changing after twice this long fails (default: ${config.minAgeSeconds})
  --no-markers         do not write ${config.successMarker} / ${config.failedMarker} into folders
  --images-to URL      also store the images in S3-compatible object storage at
                       s3://BUCKET/PREFIX, as 'deno task upload' does
                       (default: $UPLOAD_IMAGES_TO, else off)
  --images-parallel N  images put at once (default: ${DEFAULT_IMAGES_PARALLEL})
  --json               one JSON event per line on stdout; human output on stderr
  -q, --quiet          only errors and a failing summary
  -h, --help           this text

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

/** Settings of `deno task sql`. */
export interface SqlCommand {
  /** Arguments passed to psql unchanged. */
  psqlArgs: string[];
  help: boolean;
  dbUrl?: string;
  /** Tracking database path: names the embedded database's folder. */
  dbPath: string;
}

/**
 * Parses `deno task sql` arguments: `--db-url URL`, `--db-path PATH` (either also as
 * `--flag=value`) and `--help` are this program's; everything else, and everything after
 * `--`, goes to psql unchanged.
 *
 * @throws {UploadError} kind `usage` when `--db-url` or `--db-path` lacks its value.
 */
export function parseSqlCommand(
  argv: string[],
  env: Env,
  defaults: UploaderConfig = DEFAULT_CONFIG,
): SqlCommand {
  const psqlArgs: string[] = [];
  let dbUrl: string | undefined;
  let dbPath = env.UPLOAD_DB_PATH || defaults.dbPath;
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--") {
      psqlArgs.push(...argv.slice(i + 1));
      break;
    }
    const match = /^--(db-url|db-path)(?:=(.*))?$/s.exec(arg);
    if (match) {
      const value = match[2] ?? argv[++i];
      if (value === undefined || value === "") {
        throw new UploadError("usage", `Missing value for --${match[1]}`, {
          hint: "Run 'deno task sql --help' for the options",
        });
      }
      if (match[1] === "db-url") dbUrl = value;
      else dbPath = value;
    } else if (arg === "--help") {
      help = true;
    } else {
      psqlArgs.push(arg);
    }
  }
  return { psqlArgs, help, dbUrl, dbPath: fromCaller(dbPath, env) };
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

Options:
  --db-url URL     target database (default: as above)
  --db-path PATH   tracking database whose embedded database to open (default: ${config.dbPath})
  --help           this text ('psql --help' lists psql's own options)

Examples:
  deno task sql
  deno task sql -c "select test_status, count(*) from device_test group by 1"
  deno task sql -At -c "select folder_key from device_test where test_status = 'failed'"
`;
}

/**
 * Runs a script's `main` and exits with its code. A thrown error is printed as one
 * `Error:` line (passwords redacted) and one `Hint:` line when it has a hint; an
 * unexpected error also gets its stack. The exit code follows the error's kind. With
 * `--json` among the arguments, the error is also one JSON event on stdout
 * (`{"event":"error",...,"exit_code":N}`), so a pipeline reading stdout learns why.
 */
export async function runMain(main: (argv: string[]) => Promise<number>): Promise<never> {
  let code: number;
  try {
    code = await main(Deno.args);
  } catch (error) {
    code = exitCodeFor(error);
    const message = oneLine(redactUrl(messageOf(error)));
    console.error(`Error: ${message}`);
    const upload = error instanceof UploadError ? error : undefined;
    if (upload?.hint) console.error(`Hint: ${oneLine(upload.hint)}`);
    if (!upload) console.error(error);
    else if (upload.kind === "fatal" && upload.cause !== undefined) console.error(upload.cause);
    const end = Deno.args.indexOf("--");
    const flags = end < 0 ? Deno.args : Deno.args.slice(0, end);
    if (flags.includes("--json")) console.log(JSON.stringify(errorEvent(error, code)));
  }
  Deno.exit(code);
}

/**
 * The first line of a run that writes: the target as messages name it, then where it was
 * configured; for the embedded default, its folder and how to point at Supabase instead.
 *
 * @example
 * ```ts
 * targetLine({ display: "db.x.supabase.co:5432/postgres", source: "$SUPABASE_DB_URL", embedded: false });
 * // "Uploading to db.x.supabase.co:5432/postgres (from $SUPABASE_DB_URL)"
 * ```
 */
export function targetLine(connector: Pick<Connector, "display" | "source" | "embedded">): string {
  if (connector.embedded) {
    return `Using the ${connector.display} (no --db-url, SUPABASE_DB_URL or DATABASE_URL set). ` +
      `To upload to Supabase instead, set SUPABASE_DB_URL=postgresql://... ` +
      `(see README); 'deno task sql' opens this database.`;
  }
  const source = connector.source ? ` (from ${connector.source})` : "";
  return `Uploading to ${connector.display}${source}`;
}

/** The JSON event for an error that ended a command. */
export function errorEvent(error: unknown, exitCode: number): Record<string, unknown> {
  const upload = error instanceof UploadError ? error : undefined;
  return {
    event: "error",
    kind: upload?.kind ?? "fatal",
    message: redactUrl(messageOf(error)),
    ...(upload?.hint ? { hint: upload.hint } : {}),
    ...(upload?.sqlstate ? { sqlstate: upload.sqlstate } : {}),
    ...(upload?.subject ? { subject: redactUrl(upload.subject) } : {}),
    exit_code: exitCode,
  };
}

/** What to do on Ctrl-C (SIGINT) and SIGTERM. */
export interface StopHandlers {
  /** The first Ctrl-C (and the first SIGTERM when there is no `finish`). */
  interrupt: () => void;
  /** The first SIGTERM, when it means a graceful stop (watch mode). */
  finish?: () => void;
  /** A later signal (not a copy of the first): called just before the process exits with 130. */
  quit: () => void;
}

/**
 * Stop signals that arrive within this many ms of the first are copies of one request: a
 * terminal's Ctrl-C and a service manager's stop signal every process of the group, and
 * `deno task` forwards what it got to the uploader once more, within a millisecond or so.
 */
export const SIGNAL_COPIES_MS = 500;

/** What a stop signal asks for. */
export type StopRequest = "interrupt" | "finish" | "same" | "quit";

/**
 * The signal policy as a pure rule: the first stop signal interrupts (SIGTERM with
 * `finishOnTerm`: finishes gracefully); one within {@linkcode SIGNAL_COPIES_MS} of it is
 * a copy of the same request; a later one (a person pressing Ctrl-C again) quits.
 *
 * @example
 * ```ts
 * const requests = new StopRequests({ finishOnTerm: true });
 * requests.take("SIGTERM", 1000); // "finish"
 * requests.take("SIGTERM", 1001); // "same" (deno task's forward)
 * requests.take("SIGINT", 3000); // "quit"
 * ```
 */
export class StopRequests {
  readonly #finishOnTerm: boolean;
  readonly #copiesMs: number;
  #firstAt: number | null = null;

  constructor(options: { finishOnTerm?: boolean; copiesMs?: number } = {}) {
    this.#finishOnTerm = options.finishOnTerm ?? false;
    this.#copiesMs = options.copiesMs ?? SIGNAL_COPIES_MS;
  }

  /** What `signal`, arriving at `nowMs`, asks for. */
  take(signal: "SIGINT" | "SIGTERM", nowMs: number): StopRequest {
    if (this.#firstAt === null) {
      this.#firstAt = nowMs;
      return signal === "SIGTERM" && this.#finishOnTerm ? "finish" : "interrupt";
    }
    return nowMs - this.#firstAt < this.#copiesMs ? "same" : "quit";
  }
}

/**
 * Installs the scripts' signal policy ({@linkcode StopRequests}): the first Ctrl-C or
 * SIGTERM asks the run to stop (batches in flight finish, none starts), copies of it that
 * arrive with it are ignored, and a later one quits at once with exit code 130.
 *
 * @returns a function removing the listeners.
 */
export function handleStopSignals(handlers: StopHandlers): () => void {
  if (Deno.build.os === "windows") return () => {};
  const requests = new StopRequests({ finishOnTerm: handlers.finish !== undefined });
  const listener = (signal: "SIGINT" | "SIGTERM") => () => {
    switch (requests.take(signal, performance.now())) {
      case "quit":
        handlers.quit();
        Deno.exit(EXIT.INTERRUPTED);
        break;
      case "finish":
        handlers.finish?.();
        break;
      case "interrupt":
        handlers.interrupt();
        break;
      default:
        break; // a copy of the request already taken
    }
  };
  const onInt = listener("SIGINT");
  const onTerm = listener("SIGTERM");
  Deno.addSignalListener("SIGINT", onInt);
  Deno.addSignalListener("SIGTERM", onTerm);
  return () => {
    Deno.removeSignalListener("SIGINT", onInt);
    Deno.removeSignalListener("SIGTERM", onTerm);
  };
}

/**
 * The object store for `--images-to`, or null without it. Retries are reported through
 * `onRetry` (as `retry` events with the object key as subject).
 *
 * @throws {UploadError} `config` when credentials are missing or the endpoint is malformed.
 */
export function objectStoreFor(
  imagesTo: string | null,
  options: {
    env: Env;
    parallel: number;
    giveUpAfterSeconds: number;
    onRetry: (event: RetryEvent) => void;
  },
): ObjectStore | null {
  if (imagesTo === null) return null;
  return storeFromEnv(options.env, imagesTo, {
    concurrency: options.parallel,
    giveUpAfterMs: options.giveUpAfterSeconds * 1000,
    onRetry: options.onRetry,
  });
}
