/**
 * The uploader's version, as each device reports it in its health record (see
 * lib/fleet/health.ts) and `deno task fleet` shows it.
 *
 * @module
 */

/** This release of the uploader. Raise it with every release. */
export const TOOL_VERSION = "1.0.0";
