/**
 * The remote schema: `devices`, the health table and the upload table (`device_test`),
 * created, upgraded from the original scripts' shape, inspected, and explained when a role
 * may not change it. One concern per file under `schema/`:
 *
 * - `ddl.ts`: the ONE `DO` block that creates or upgrades everything in one transaction
 *   ({@linkcode buildSchemaStatements}), its columns generated from lib/sink/columns.ts;
 * - `inspect.ts`: the ONE read-only inspection of the catalog and its parsing;
 * - `checks.ts`: what is missing, which privileges and policies the role lacks;
 * - `permissions.ts`: a 42501 refusal explained ({@linkcode describePermissionError});
 * - `devices.ts`: this device's row in `devices`;
 * - `step.ts`: a schema statement's errors, the statement timeout retried by the caller;
 * - `ensure.ts`: {@linkcode ensureSchema}, the step before the first batch;
 * - `print.ts`: {@linkcode printSchemaSql}, the SQL an owner runs once.
 *
 * This module re-exports what the rest of the program uses.
 *
 * @module
 */

export {
  buildRekeyCountStatement,
  buildSchemaStatements,
  FOLDER_KEY_FUNCTION,
  parseRekeyReply,
  type SchemaOptions,
  UNKNOWN_DEVICE,
} from "./schema/ddl.ts";
export {
  buildInspectStatement,
  type ColumnState,
  type ForeignKeyState,
  parseInspection,
  type PolicyState,
  type RelationState,
  type SchemaInspection,
  type UniqueState,
} from "./schema/inspect.ts";
export {
  findMissing,
  policiesOf,
  type PolicyCommand,
  type TablePolicies,
} from "./schema/checks.ts";
export {
  describePermissionError,
  type PermissionContext,
  PRINT_SCHEMA_COMMAND,
} from "./schema/permissions.ts";
export { isSchemaTimeout, SCHEMA_TIMEOUT_ATTEMPTS, schemaTimeoutError } from "./schema/step.ts";
export { ensureSchema, type EnsureSchemaOptions, type SchemaResult } from "./schema/ensure.ts";
export { PLACEHOLDER_ROLE, type PrintSchemaOptions, printSchemaSql } from "./schema/print.ts";
