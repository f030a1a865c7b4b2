/**
 * The readiness rule (`--ready-when GLOB`): a folder is complete once it holds a file whose
 * name matches the glob (the device's report, written last). The glob is compiled once
 * into a matcher; pure functions, no I/O.
 *
 * @module
 */

import { UploadError } from "../core/errors.ts";

/** Tells whether a file name matches. */
export type NameMatcher = (name: string) => boolean;

const HINT = "--ready-when takes a file-name pattern such as '*.pdf' or 'report_*.PDF' " +
  "(* any characters, ? one, [abc] one of them; any case)";

/**
 * Compiles a file-name glob: `*` any run of characters, `?` one character, `[abc]` /
 * `[a-z]` / `[!abc]` one of (or none of) a set; everything else stands for itself.
 * Matching ignores case (a device may write `.PDF`).
 *
 * @example
 * ```ts
 * compileReadyGlob("*.pdf")("2025-06-02 16:42.PDF"); // true
 * compileReadyGlob("*.pdf")("stats.json"); // false
 * ```
 *
 * @throws {UploadError} kind `usage` for an empty glob, one holding `/` (it matches names
 * in the folder, not paths) or an unclosed `[`.
 */
export function compileReadyGlob(glob: string): NameMatcher {
  const shown = JSON.stringify(glob);
  if (glob.trim() === "") {
    throw new UploadError("usage", "Empty value for --ready-when", { hint: HINT });
  }
  if (glob.includes("/")) {
    throw new UploadError(
      "usage",
      `Invalid --ready-when ${shown}: it matches file names in the folder, not paths with /`,
      { hint: HINT },
    );
  }
  let source = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*") source += ".*";
    else if (c === "?") source += ".";
    else if (c === "[") {
      const end = glob.indexOf("]", i + 2);
      if (end < 0) {
        throw new UploadError("usage", `Invalid --ready-when ${shown}: a [ is not closed`, {
          hint: HINT,
        });
      }
      let set = glob.slice(i + 1, end);
      const negate = set.startsWith("!");
      if (negate) set = set.slice(1);
      source += `[${negate ? "^" : ""}${set.replace(/[\\\]^]/g, (x) => `\\${x}`)}]`;
      i = end;
    } else source += c.replace(/[.+^${}()|\\]/g, (x) => `\\${x}`);
  }
  const pattern = new RegExp(`^${source}$`, "isu");
  return (name) => pattern.test(name);
}

/**
 * Whether a folder's files satisfy the readiness rule: one of them matches.
 *
 * @example
 * ```ts
 * isReady([{ name: "a.jpg" }, { name: "r.pdf" }], compileReadyGlob("*.pdf")); // true
 * ```
 */
export function isReady(files: readonly { name: string }[], matcher: NameMatcher): boolean {
  return files.some((f) => matcher(f.name));
}
