/**
 * The commands' settings, from their command lines: `deno task upload`, `deno task quick`
 * and `deno task sql`. Each flag is parsed by the flag table (`parse.ts`); what is checked
 * here is only what involves several flags or the positional arguments (modes that
 * exclude each other, the base path, `-` for stdin).
 *
 * @module
 */

import { DEFAULT_CONFIG, type UploaderConfig } from "../../config.ts";
import { UploadError } from "../core/errors.ts";
import { parseDuration } from "../fleet/report.ts";
import { type Env, fromCaller, parseCommandLine, type ParsedLine, usage } from "./parse.ts";

/** Settings of `deno task upload`. Paths are absolute (resolved from the caller's directory). */
export interface UploadCommand {
  /** The base folder to walk, or null (`--status`, `--print-schema`, `--help`). */
  basePath: string | null;
  scanOnly: boolean;
  status: boolean;
  dryRun: boolean;
  watch: boolean;
  rescanEverySeconds: number;
  movedFrom: string | null;
  printSchema: boolean;
  role: string | null;
  isolateDevices: boolean;
  imagesTo: string | null;
  imagesParallel: number;
  /** `--verify`, also set by `--rebuild-tracker` (a verify on a new tracker). */
  verify: boolean;
  adoptDevice: boolean;
  rebuildTracker: boolean;
  markers: boolean;
  json: boolean;
  quiet: boolean;
  help: boolean;
  dbUrl?: string;
  /** config.ts with the environment's and the flags' settings. */
  config: UploaderConfig;
}

/** Settings of `deno task quick`. */
export interface QuickCommand {
  /** Folders named on the command line (empty when {@linkcode QuickCommand.stdin} is set). */
  paths: string[];
  /** Read folder paths from stdin, one per line (the only argument was `-`). */
  stdin: boolean;
  /** `--base DIR`: keys are relative to it; null keys each folder as quick upload does. */
  base: string | null;
  imagesTo: string | null;
  imagesParallel: number;
  markers: boolean;
  json: boolean;
  quiet: boolean;
  help: boolean;
  dbUrl?: string;
  config: UploaderConfig;
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

/** A parsed value as text, or null. */
function text(line: ParsedLine, key: string): string | null {
  const v = line.values[key];
  return typeof v === "string" ? v : null;
}

/** A parsed value as a boolean. */
function flag(line: ParsedLine, key: string): boolean {
  return line.values[key] === true;
}

/**
 * Parses `deno task upload` arguments into settings.
 *
 * @throws {UploadError} kind `usage` for unknown flags, bad values or a missing base path;
 *   `config` for a bad environment variable.
 */
export function parseUploadCommand(
  argv: string[],
  env: Env,
  defaults: UploaderConfig = DEFAULT_CONFIG,
): UploadCommand {
  const line = parseCommandLine("upload", argv, env, defaults);
  const basePath = checkUploadModes(line, "deno task upload");
  return {
    basePath: basePath === null ? null : fromCaller(basePath, env),
    scanOnly: flag(line, "scanOnly"),
    status: flag(line, "status"),
    dryRun: flag(line, "dryRun"),
    watch: flag(line, "watch"),
    rescanEverySeconds: line.values.rescanEverySeconds as number,
    movedFrom: text(line, "movedFrom"),
    printSchema: flag(line, "printSchema"),
    role: text(line, "role"),
    isolateDevices: flag(line, "isolateDevices"),
    imagesTo: text(line, "imagesTo"),
    imagesParallel: line.values.imagesParallel as number,
    verify: flag(line, "verify") || flag(line, "rebuildTracker"),
    adoptDevice: flag(line, "adoptDevice"),
    rebuildTracker: flag(line, "rebuildTracker"),
    markers: flag(line, "markers"),
    json: flag(line, "json"),
    quiet: flag(line, "quiet"),
    help: flag(line, "help"),
    dbUrl: text(line, "dbUrl") ?? undefined,
    config: line.config,
  };
}

/**
 * Checks that the modes of `deno task upload` go together and the base path is there when
 * one is needed; returns the base path as given (or null).
 */
function checkUploadModes(line: ParsedLine, command: string): string | null {
  const on = (name: string) => line.given.has(name);
  // --rebuild-tracker is --verify on a new tracker: the two go together.
  const verify = on("rebuild-tracker") ? "rebuild-tracker" : "verify";
  const modes = ["print-schema", "status", "scan-only", "dry-run", "watch", verify]
    .filter(on).map((m) => `--${m}`);
  const help = on("help");
  if (!help && modes.length > 1) {
    usage(`${modes.join(" and ")} cannot be combined`, `Run '${command} --help' for each mode`);
  }
  const positionals = line.positionals;
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
  const line = parseCommandLine("quick", argv, env, defaults);
  const positionals = line.positionals;
  const help = flag(line, "help");
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
    usage(
      "Missing the folder(s) to upload",
      `Usage: ${command} <folder>... | -  [options]; '${command} --help' for more`,
    );
  }
  return {
    paths: stdin ? [] : positionals.map((p) => fromCaller(p, env)),
    stdin,
    base: text(line, "base"),
    imagesTo: text(line, "imagesTo"),
    imagesParallel: line.values.imagesParallel as number,
    markers: flag(line, "markers"),
    json: flag(line, "json"),
    quiet: flag(line, "quiet"),
    help,
    dbUrl: text(line, "dbUrl") ?? undefined,
    config: line.config,
  };
}

/**
 * Parses `deno task sql` arguments: `--db-url URL`, `--db-path PATH` (either also as
 * `--flag=value`) and `--help` are this program's; everything else, and everything after
 * `--`, goes to psql unchanged (psql's flags are psql's, so this parser cannot be the
 * table's strict one).
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
        usage(`Missing value for --${match[1]}`, "Run 'deno task sql --help' for the options");
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

/** Settings of `deno task fleet`. */
export interface FleetCommand {
  /** `--stale DURATION` in ms, or undefined. */
  staleMs?: number;
  /** One JSON document on stdout. */
  json: boolean;
  /** Print the help text. */
  help: boolean;
  /** The target database's URL, when given. */
  dbUrl?: string;
  /** Tracking database path: names the embedded database's folder. */
  dbPath: string;
  /** The configuration (the table's name). */
  config: UploaderConfig;
}

/**
 * Parses `deno task fleet` arguments.
 *
 * @throws {UploadError} `usage` for unknown flags, a bad duration, empty values or arguments.
 */
export function parseFleetCommand(
  argv: string[],
  env: Env,
  defaults: UploaderConfig = DEFAULT_CONFIG,
): FleetCommand {
  const line = parseCommandLine("fleet", argv, env, defaults);
  if (line.positionals.length > 0) {
    usage(
      `Unexpected argument: ${line.positionals[0]}`,
      "Run 'deno task fleet --help' for the options",
    );
  }
  const stale = text(line, "stale");
  return {
    staleMs: stale === null ? undefined : parseDuration("--stale", stale),
    json: flag(line, "json"),
    help: flag(line, "help"),
    dbUrl: text(line, "dbUrl") ?? undefined,
    dbPath: line.config.dbPath,
    config: line.config,
  };
}
