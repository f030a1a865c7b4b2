/**
 * The readiness rule's glob (lib/plan/ready.ts): what matches, what is refused with a
 * usage error, and the readiness of a folder's files. Pure; no files.
 */

import assert from "node:assert/strict";
import { UploadError } from "../../lib/core/errors.ts";
import { compileReadyGlob, isReady } from "../../lib/plan/ready.ts";

Deno.test("compileReadyGlob: *, ?, [set], [!set], any case, nothing else special", () => {
  const table: [string, string, boolean][] = [
    ["*.pdf", "2025-06-02 16:42.pdf", true],
    ["*.pdf", "2025-06-02 16:42.PDF", true],
    ["*.pdf", "report.pdf.part", false],
    ["*.pdf", "stats.json", false],
    ["report_?.pdf", "report_1.pdf", true],
    ["report_?.pdf", "report_12.pdf", false],
    ["[ab]*.txt", "b-notes.txt", true],
    ["[ab]*.txt", "c-notes.txt", false],
    ["[!ab]*.txt", "c-notes.txt", true],
    ["[a-c].jpg", "B.JPG", true],
    ["done.flag", "done.flag", true],
    ["done.flag", "doneXflag", false],
    ["a+b (1).pdf", "a+b (1).pdf", true],
    ["$x^.pdf", "$x^.pdf", true],
  ];
  for (const [glob, name, want] of table) {
    assert.equal(compileReadyGlob(glob)(name), want, `${glob} ~ ${name}`);
  }
});

Deno.test("compileReadyGlob: empty, a path, an unclosed [ are usage errors naming the flag", () => {
  for (
    const [glob, why] of [["", /Empty value/], ["sub/*.pdf", /not paths/], ["[ab", /not closed/]]
  ) {
    assert.throws(() => compileReadyGlob(glob as string), (e: unknown) => {
      assert.ok(e instanceof UploadError);
      assert.equal(e.kind, "usage");
      assert.match(e.message, /--ready-when/);
      assert.match(e.message, why as RegExp);
      return true;
    });
  }
});

Deno.test("isReady: one matching file is enough", () => {
  const pdf = compileReadyGlob("*.pdf");
  assert.equal(isReady([{ name: "a.jpg" }, { name: "r.pdf" }], pdf), true);
  assert.equal(isReady([{ name: "a.jpg" }], pdf), false);
  assert.equal(isReady([], pdf), false);
});
