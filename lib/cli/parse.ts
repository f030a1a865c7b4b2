/**
 * Command lines -> settings, from the flag table (`flags.ts`): precedence flag >
 * environment variable > config.ts, every value checked against its kind and range, every
 * relative path taken from the caller's directory. Pure: takes argv and the environment,
 * returns settings or throws a usage error with a one-line hint.
 *
 * @module
 */

import { resolve } from "node:path";
import { parseArgs, type ParseArgsConfig } from "node:util";
import { DEFAULT_CONFIG, type UploaderConfig } from "../../config.ts";
import { UploadError } from "../core/errors.ts";
import { parseImagesTo } from "../objects/storage.ts";
import { compileReadyGlob } from "../plan/ready.ts";
import { type CommandName, flagsOf, type FlagSpec, keyOf } from "./flags.ts";

/** The environment, as the scripts read it. */
export type Env = Record<string, string | undefined>;

/** A flag's parsed value. */
export type FlagValue = boolean | number | string | undefined;

/** What {@linkcode parseCommandLine} found. */
export interface ParsedLine {
  /** Each flag's setting that is no config.ts field, by its key (`dryRun`, `markers`, ...). */
  values: Record<string, FlagValue>;
  /** config.ts's defaults with the environment's and the flags' settings applied. */
  config: UploaderConfig;
  positionals: string[];
  /** The names of the flags given (a boolean one only when it was set). */
  given: Set<string>;
}

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

/** Throws a usage error (exit 2) with a one-line hint. */
export function usage(message: string, hint: string): never {
  throw new UploadError("usage", message, { hint });
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

/** node:util's option list for a command's flags. */
function argsConfig(flags: readonly FlagSpec[]): NonNullable<ParseArgsConfig["options"]> {
  const options: NonNullable<ParseArgsConfig["options"]> = {};
  for (const f of flags) {
    const type = f.kind === "boolean" ? "boolean" : "string";
    options[f.name] = f.short ? { type, short: f.short } : { type };
    for (const alias of f.aliases ?? []) options[alias] = { type };
  }
  return options;
}

/** The range of a number flag, for {@linkcode parseNumber}. */
function rangeOf(flag: FlagSpec): { min: number; max?: number; integer: boolean } {
  return { min: flag.min ?? 0, max: flag.max, integer: flag.kind === "integer" };
}

/**
 * A flag's value from the environment variable that gives its default, if that is set.
 *
 * @throws {UploadError} `config` naming the variable when its value is out of range.
 */
function fromEnv(flag: FlagSpec, env: Env): FlagValue {
  const text = flag.env ? env[flag.env] : undefined;
  if (text === undefined || text === "") return undefined;
  if (flag.kind === "choice" && !flag.choices!.includes(text)) {
    throw new UploadError("config", `Invalid environment variable ${flag.env}="${text}"`, {
      hint: `${flag.env} takes ${flag.choices!.join(" or ")}`,
    });
  }
  if (flag.kind !== "integer" && flag.kind !== "number") return text;
  try {
    return parseNumber(flag.env!, text, rangeOf(flag));
  } catch (error) {
    throw new UploadError("config", `Invalid environment variable ${flag.env}="${text}"`, {
      hint: (error as UploadError).hint,
    });
  }
}

/** A flag's value as given on the command line, checked. */
function fromFlag(flag: FlagSpec, raw: string | boolean, env: Env): FlagValue {
  if (flag.kind === "boolean") return flag.negate ? raw !== true : raw === true;
  const text = raw as string;
  if (flag.kind === "integer" || flag.kind === "number") {
    return parseNumber(`--${flag.name}`, text, rangeOf(flag));
  }
  if (text === "") usage(`Empty value for --${flag.name}`, flag.emptyHint ?? "Give it a value");
  if (flag.kind === "choice" && !flag.choices!.includes(text)) {
    usage(
      `Invalid value for --${flag.name}: "${text}"`,
      `--${flag.name} takes ${flag.choices!.join(" or ")}`,
    );
  }
  return flag.kind === "path" ? fromCaller(text, env) : text;
}

/**
 * A flag's raw value under its name or one of its aliases (the names given, in `given`).
 *
 * @throws {UploadError} `usage` when the name and an alias give different values.
 */
function rawOf(
  flag: FlagSpec,
  raw: Record<string, string | boolean | (string | boolean)[] | undefined>,
): string | boolean | undefined {
  let found: { name: string; value: string | boolean } | undefined;
  for (const name of [flag.name, ...(flag.aliases ?? [])]) {
    const value = raw[name] as string | boolean | undefined;
    if (value === undefined || value === false) continue;
    if (found !== undefined && found.value !== value) {
      usage(
        `--${found.name} and --${name} give different values`,
        `--${name} is another name of --${flag.name}: give one of them`,
      );
    }
    found ??= { name, value };
  }
  return found?.value ?? raw[flag.name] as string | boolean | undefined;
}

const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Applies the environment's settings over the defaults: the variables the flag table
 * names for config.ts fields, and the device's identity (`DEVICE_ID`, `DEVICE_NAME`,
 * `DEVICE_TYPE`), which no flag sets.
 *
 * @throws {UploadError} `config` for a variable whose value is out of range or no UUID.
 */
export function configFromEnv(defaults: UploaderConfig, env: Env): UploaderConfig {
  const config: UploaderConfig = { ...defaults };
  const seen = new Set<string>();
  for (const flag of flagsOf("upload").concat(flagsOf("quick"), flagsOf("fleet"))) {
    if (!flag.config || !flag.env || seen.has(flag.name)) continue;
    seen.add(flag.name);
    const value = fromEnv(flag, env);
    if (value !== undefined) (config as unknown as Record<string, FlagValue>)[flag.config] = value;
  }
  if (env.DEVICE_ID) config.deviceId = env.DEVICE_ID;
  if (env.DEVICE_NAME) config.deviceName = env.DEVICE_NAME;
  if (env.DEVICE_TYPE) config.deviceType = env.DEVICE_TYPE;
  if (config.deviceId && !UUID_PATTERN.test(config.deviceId)) {
    throw new UploadError("config", `DEVICE_ID is not a UUID: "${config.deviceId}"`, {
      hint: "Set DEVICE_ID to a UUID such as 3f0e6a9e-8d4b-4a59-9d7e-2b1c5a7f9e10, or unset it",
    });
  }
  return config;
}

/**
 * Parses a command line by the flag table: each flag of `command` is checked and put where
 * it belongs (a config.ts field, flag over environment over config.ts; else a setting by
 * its key, flag over environment over the table's fallback), and a flag that needs another
 * is refused without it. Relative paths (flags and `config.dbPath`) are the caller's.
 *
 * @throws {UploadError} `usage` for unknown flags and bad values; `config` for a bad
 *   environment variable.
 */
export function parseCommandLine(
  command: CommandName,
  argv: string[],
  env: Env,
  defaults: UploaderConfig = DEFAULT_CONFIG,
): ParsedLine {
  const title = `deno task ${command}`;
  const flags = flagsOf(command);
  const { values: raw, positionals } = parseFlags(argv, argsConfig(flags), title);
  const config = configFromEnv(defaults, env);
  const values: Record<string, FlagValue> = {};
  const given = new Set<string>();
  for (const flag of flags) {
    const r = rawOf(flag, raw);
    const isGiven = r !== undefined && r !== false;
    if (isGiven) given.add(flag.name);
    const value = isGiven ? fromFlag(flag, r as string | boolean, env) : undefined;
    if (flag.config) {
      if (value !== undefined) {
        (config as unknown as Record<string, FlagValue>)[flag.config] = value;
      }
      continue;
    }
    values[keyOf(flag)] = value ??
      (flag.kind === "boolean" ? flag.negate === true : fromEnv(flag, env) ?? flag.fallback);
  }
  for (const flag of flags) {
    if (flag.needs && given.has(flag.name) && !given.has(flag.needs) && !given.has("help")) {
      usage(
        `--${flag.name} needs --${flag.needs}`,
        `Run '${title} --help' for what --${flag.needs} does`,
      );
    }
  }
  config.dbPath = fromCaller(config.dbPath, env);
  if (typeof values.imagesTo === "string") parseImagesTo(values.imagesTo); // a usage error now
  checkObjectSettings(values, config, given);
  return { values, config, positionals, given };
}

/**
 * Checks the settings that involve several flags: `--images-as urls` needs a store
 * (`--objects-to` or `$UPLOAD_IMAGES_TO`), `--ready-timeout` a readiness rule, and the
 * readiness glob must compile.
 *
 * @throws {UploadError} `usage` naming what is missing.
 */
function checkObjectSettings(
  values: Record<string, FlagValue>,
  config: UploaderConfig,
  given: ReadonlySet<string>,
): void {
  if (given.has("help")) return;
  const hasStore = typeof values.imagesTo === "string" && values.imagesTo.trim() !== "";
  if (config.imagesAs === "urls" && !hasStore && "imagesTo" in values) {
    usage(
      "--images-as urls needs --objects-to: the images' URLs are those of their stored objects",
      "Add --objects-to s3://BUCKET/PREFIX (or set UPLOAD_IMAGES_TO)",
    );
  }
  if (given.has("ready-timeout") && config.readyWhen === "") {
    usage(
      "--ready-timeout needs --ready-when",
      "Give the file that marks a folder complete, e.g. --ready-when '*.pdf'",
    );
  }
  if (config.readyWhen !== "") compileReadyGlob(config.readyWhen);
}
