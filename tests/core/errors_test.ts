/**
 * The one mapping from how a run went to its status and exit code (`decideOutcome`,
 * `exitCodeFor`), pinned as a table: every error kind, and the order in which an error, an
 * interruption, a graceful stop and failed folders decide.
 */

import assert from "node:assert/strict";
import {
  decideOutcome,
  type ErrorKind,
  EXIT,
  exitCodeFor,
  messageOf,
  UploadError,
} from "../../lib/core/errors.ts";

Deno.test("exitCodeFor: each error kind's exit code", () => {
  const table: [ErrorKind, number][] = [
    ["usage", 2],
    ["config", 2],
    ["locked", 2],
    ["unreachable", 3],
    ["transient", 3],
    ["blocked", 3],
    ["interrupted", 130],
    ["folder", 1],
    ["data", 1],
    ["timeout", 1],
    ["fatal", 1],
  ];
  for (const [kind, code] of table) {
    assert.equal(exitCodeFor(new UploadError(kind, "x")), code, kind);
  }
  assert.equal(exitCodeFor(new Error("a bug")), EXIT.SOME_FAILED);
  assert.equal(exitCodeFor("thrown text"), EXIT.SOME_FAILED);
});

Deno.test("decideOutcome: an error decides, then an interruption, a graceful stop, failures", () => {
  const error = (kind: ErrorKind) => new UploadError(kind, kind);
  const table: [Parameters<typeof decideOutcome>[0], string, number][] = [
    [{ interrupted: false, failed: 0 }, "completed", 0],
    [{ interrupted: false, failed: 3 }, "completed", 1],
    [{ interrupted: true, failed: 3 }, "interrupted", 130],
    [{ interrupted: false, stopped: true, failed: 3 }, "stopped", 0],
    [{ interrupted: true, stopped: true, failed: 0 }, "interrupted", 130],
    [{ error: error("config"), interrupted: true, failed: 0 }, "failed", 2],
    [
      { error: error("unreachable"), interrupted: false, stopped: true, failed: 0 },
      "unreachable",
      3,
    ],
    [{ error: error("transient"), interrupted: false, failed: 0 }, "unreachable", 3],
    [{ error: error("blocked"), interrupted: false, failed: 5 }, "blocked", 3],
    [{ error: error("fatal"), interrupted: false, failed: 0 }, "failed", 1],
    [{ error: error("locked"), interrupted: false, failed: 0 }, "failed", 2],
    // An interruption carried as an error is an interruption.
    [{ error: error("interrupted"), interrupted: false, failed: 2 }, "interrupted", 130],
  ];
  for (const [input, status, exitCode] of table) {
    assert.deepEqual(decideOutcome(input), { status, exitCode }, JSON.stringify(input));
  }
});

Deno.test("messageOf: an error's message, anything else as text", () => {
  assert.equal(messageOf(new UploadError("data", "23514: check")), "23514: check");
  assert.equal(messageOf(42), "42");
});
