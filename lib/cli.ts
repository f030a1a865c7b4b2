/**
 * Command-line parsing shared by the scripts: flags -> settings, with precedence flag >
 * environment variable > config.ts. Pure: takes argv and the environment, returns
 * settings or throws a usage error with a one-line hint.
 *
 * @module
 */

import { parseArgs, type ParseArgsConfig } from "node:util";
import { DEFAULT_CONFIG, type UploaderConfig } from "../config.ts";
import { UploadError } from "./errors.ts";

/** Settings of `deno task upload`. */
export interface UploadCommand {
  basePath: string | null;
  scanOnly: boolean;
  status: boolean;
  dryRun: boolean;
  markers: boolean;
  json: boolean;
  quiet: boolean;
  help: boolean;
  dbUrl?: string;
  config: UploaderConfig;
}

type Env = Record<string, string | undefined>;

/** The flags of `deno task upload`, in `--help` order: [flag, value, default text, description]. */
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
  "batch-delay": { type: "string" },
  "no-markers": { type: "boolean" },
  json: { type: "boolean" },
  quiet: { type: "boolean", short: "q" },
  help: { type: "boolean", short: "h" },
} as const;

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
  config.batchDelaySeconds = num("batch-delay", { min: 0 }) ?? config.batchDelaySeconds;
  if (typeof values["db-path"] === "string") {
    if (values["db-path"] === "") {
      throw new UploadError("usage", "Empty value for --db-path", {
        hint: "--db-path takes the tracking database's file name",
      });
    }
    config.dbPath = values["db-path"];
  }
  const help = values.help === true;
  const status = values.status === true;
  const scanOnly = values["scan-only"] === true;
  const dryRun = values["dry-run"] === true;
  const modes = [status && "--status", scanOnly && "--scan-only", dryRun && "--dry-run"]
    .filter(Boolean);
  if (!help && modes.length > 1) {
    throw new UploadError("usage", `${modes.join(" and ")} cannot be combined`, {
      hint: `Run '${command} --help' for what each mode does`,
    });
  }
  if (positionals.length > 1) {
    throw new UploadError("usage", `Expected one base path, got ${positionals.length}`, {
      hint: `Quote paths with spaces: ${command} "my data/"`,
    });
  }
  const basePath = positionals[0] ?? null;
  if (!help && !status && basePath === null) {
    throw new UploadError("usage", "Missing the base path to upload", {
      hint: `Usage: ${command} <base_path> [options]; '${command} --help' for more`,
    });
  }
  if (values["db-url"] === "") {
    throw new UploadError("usage", "Empty value for --db-url", {
      hint: "Give a postgresql:// URL, or leave the flag out for the embedded database",
    });
  }
  return {
    basePath,
    scanOnly,
    status,
    dryRun,
    markers: values["no-markers"] !== true,
    json: values.json === true,
    quiet: values.quiet === true,
    help,
    dbUrl: typeof values["db-url"] === "string" ? values["db-url"] : undefined,
    config,
  };
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
       deno task upload --status [--db-path PATH] [--json]

Walks <base_path>, finds every folder that directly holds an image or ${config.statsFileName},
records it in a local tracking database, and uploads new or changed folders in batches
through psql. Unchanged folders are not read again; a re-run after an interruption
resumes where the last one stopped.

Modes:
  (default)            scan, then upload new and changed folders
  --scan-only          scan and record; print new / changed / unchanged / missing /
                       unreadable counts; upload nothing
  --dry-run            scan, diff and build rows; report what would be uploaded;
                       write nothing anywhere (server, tracker, folders)
  --status             report from the tracking database: totals by status, recent
                       batches with their rate, recent failures, missing folders

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
  --give-up-after S    stop with exit code 3 when the server stays unreachable this
                       long (default: ${config.giveUpAfterSeconds})
  --batch-delay S      pause between batches, for small shared databases (default: ${config.batchDelaySeconds})
  --no-markers         do not write ${config.successMarker} / ${config.failedMarker} into folders
  --json               one JSON event per line on stdout; human output on stderr
  -q, --quiet          no progress; errors and a failing summary still print
  -h, --help           this text

Environment:
  SUPABASE_DB_URL, DATABASE_URL   target URL (keeps the password out of argv and history)
  PGHOST, PGSERVICE, PGPASSWORD   libpq's own settings, used when no URL is given
  DEVICE_ID, DEVICE_NAME, DEVICE_TYPE   this device's identity in the devices table
  BATCH_SIZE, MAX_RETRIES, BATCH_DELAY_SECONDS, UPLOAD_DB_PATH   defaults for the flags
  Precedence: flag, then environment, then config.ts.

Exit codes:
  0 all done   1 some folders failed   2 usage or configuration error
  3 target unreachable   130 interrupted (run again to resume)

Examples:
  deno task upload examples/data
  SUPABASE_DB_URL="$(cat ~/.config/uploader/url)" deno task upload /media/usb/data --parallel 8
  deno task upload data/ --json --quiet | jq -c 'select(.event=="folder_failed")'
`;
}
