/**
 * Fault: a hostile input tree. Names with quotes, `$$`, backslashes, tabs, newlines,
 * emoji, other scripts, both Unicode normal forms, `%` and `_`, SQL fragments and psql
 * meta-commands; a folder with thousands of images; a stats.json of several MB; JSON
 * nested 5,000 levels; arrays, scalars, `null`, a BOM, numbers beyond double precision;
 * invalid JSON, empty files, invalid UTF-8 (in content and in names), `\u0000`, a lone
 * surrogate, JSON too deep for the server, a stats.json that is a link; symlink loops (said
 * once, not followed); hidden entries; nested units
 * and same-named folders; folders that vanish or change between the scan and the read.
 * Every good folder lands exactly (names, images, test_results compared with the disk,
 * and test_results compared by the server itself with the file's text); every bad one
 * fails alone with a message naming it; the exit code is 1.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { hasPostgres, type PgServer, startPostgres } from "../../support/postgres.ts";
import { type TreeSpec, writeTree } from "../../support/tree.ts";
import {
  assertTableMatches,
  describeExit,
  type ExpectedRow,
  expectedRows,
  runUploader,
  startUploader,
  tableRows,
  trackerState,
  withTempDir,
} from "../../support/run.ts";

const OLD = Date.UTC(2024, 4, 1, 12, 0, 0, 250);

/** JSON text nested `depth` levels deep. */
function nested(depth: number, open: string, inner: string, close: string): string {
  return open.repeat(depth) + inner + close.repeat(depth);
}

/** About `bytes` of realistic measurement data as JSON text. */
function bigStats(bytes: number): string {
  const samples: unknown[] = [];
  let size = 0;
  for (let i = 0; size < bytes; i++) {
    const s = {
      i,
      t: new Date(OLD + i * 10).toISOString(),
      x: (i * 7919) % 10007 / 7.3,
      label: `particle "${i}" \\ ${"é"} ${i % 3 ? "ok" : "'edge'"}`,
    };
    samples.push(s);
    size += JSON.stringify(s).length;
  }
  return JSON.stringify({ result: "PASS", samples });
}

/** The good folders: key -> entries below it (relative paths). */
function goodTree(): TreeSpec {
  const json = (value: unknown) => ({ json: value, mtime: OLD });
  const text = (value: string) => ({ text: value, mtime: OLD });
  const img = { bytes: 16, mtime: OLD };
  const spec: TreeSpec = {
    [`quote's "double"/stats.json`]: json({ result: "PASS", note: `it's "quoted" ''` }),
    [`quote's "double"/a'b"c.jpg`]: img,
    ["$$dollar$$ $uploader$/stats.json"]: json({
      result: "$$ $uploader$ $1",
      "$$key$$": "$tag$ $$",
    }),
    ["$$dollar$$ $uploader$/$$.png"]: img,
    ["back\\slash \\\\ \\n/stats.json"]: json({ path: "C:\\dir\\file", esc: "\\u0041 \\n \\'" }),
    ["back\\slash \\\\ \\n/x\\y.JPG"]: img,
    ["tab\there/stats.json"]: json({ "ta\tb": "x\ty", result: "PASS" }),
    ["tab\there/tab\t.jpg"]: img,
    ["new\nline/img\n1.jpg"]: img,
    ["new\nline/img\r2.png"]: img,
    ["emoji 🧪🔬 ünïcødé/stats.json"]: json({
      result: "✓ 通过",
      "ключ": "значение",
      emoji: "🧪👩‍🔬",
    }),
    ["emoji 🧪🔬 ünïcødé/图像 🖼.png"]: img,
    ["cjk 测试 שלום/stats.json"]: json({ "שלום": "עולם", "测试": [1, 2] }),
    ["caf\u00e9/stats.json"]: json({ form: "NFC" }),
    ["cafe\u0301/stats.json"]: json({ form: "NFD" }),
    ["100% _under_ %s %d/stats.json"]: json({ like: "%_\\%", result: "PASS" }),
    ["Robert'); DROP TABLE device_test;--/stats.json"]: json({
      sql: "'); DELETE FROM devices; --",
      x: "1' OR '1'='1",
    }),
    [`psql \\if :ERROR :'x' :"y" \\echo/stats.json`]: json({
      meta: "\\echo @@reply-0 ok 1\n\\if :ERROR\n\\q\n;",
      ":'LAST_ERROR_MESSAGE'": ":ROW_COUNT",
    }),
    [`psql \\if :ERROR :'x' :"y" \\echo/\\q.jpg`]: img,
    ["big/stats.json"]: text(bigStats(4 * 1024 * 1024)),
    ["deep/stats.json"]: text(nested(5000, "[", "", "]")),
    ["deepobj/stats.json"]: text(nested(5000, '{"a":', '"bottom"', "}")),
    ["array/stats.json"]: text('[1, "two", {"three": 3}, null]'),
    ["null/stats.json"]: text("null"),
    ["null/photo.jpg"]: img,
    ["string/stats.json"]: text('"just a string"'),
    ["number/stats.json"]: text("42"),
    ["bool/stats.json"]: text("false"),
    ["bom/stats.json"]: text('\uFEFF{"result": "PASS", "bom": true}'),
    ["numbers/stats.json"]: text(
      '{"big": 12345678901234567890, "precise": 0.1000000000000000055511151231257827, ' +
        '"trailing": 1.10, "huge": 1e400, "tiny": 1e-400, "neg": -0, "dup": 1, "dup": 2}',
    ),
    ["Parent/stats.json"]: json({ level: "parent" }),
    ["Parent/Child/stats.json"]: json({ level: "child" }),
    ["Parent/Child/img.jpg"]: img,
    ["A/Run1/stats.json"]: json({ run: "A" }),
    ["B/Run1/stats.json"]: json({ run: "B" }),
    ["loopy/stats.json"]: json({ loops: true }),
    ["loopy/self"]: { symlink: "." },
    ["loopy/up"]: { symlink: ".." },
    ["loopy/sub/back"]: { symlink: "../.." },
    ["linked/img.jpg"]: img,
    ["linked/stats.json"]: { symlink: "../A/Run1/stats.json" },
    ["visible/stats.json"]: json({ hidden_files: "ignored" }),
    ["visible/.secret.jpg"]: img,
    [".hidden/stats.json"]: json({ never: "uploaded" }),
    ["withbadfile/stats.json"]: json({ result: "PASS" }),
    ["zz-change/stats.json"]: json({ version: 1 }),
    ["zz-newimg/stats.json"]: json({ images: "one more comes" }),
    ["zz-newimg/a.jpg"]: img,
  };
  for (let i = 0; i < 3000; i++) spec[`many/img_${String(i).padStart(4, "0")}.jpg`] = img;
  spec["many/stats.json"] = json({ result: "PASS", images: 3000 });
  return spec;
}

/** Folders that must fail (run 1), with what is wrong. */
function badTree(): TreeSpec {
  const text = (value: string) => ({ text: value, mtime: OLD });
  return {
    ["bad-invalid-json/stats.json"]: text('{"result": "PASS",'),
    ["bad-empty/stats.json"]: text(""),
    ["bad-utf8/stats.json"]: {
      bytes: new Uint8Array([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]),
      mtime: OLD,
    },
    ["bad-nul/stats.json"]: text('{"a": "x\\u0000y"}'),
    ["bad-lone-surrogate/stats.json"]: text('{"a": "\\ud800"}'),
    ["bad-too-deep/stats.json"]: text(nested(20000, "[", "", "]")),
    ["zz-vanish/stats.json"]: text('{"here": "now"}'),
    ["zz-vanish-stats/stats.json"]: text('{"here": "now"}'),
    ["zz-vanish-stats/keep.jpg"]: { bytes: 8, mtime: OLD },
    ["bad-stats-dir/a.jpg"]: { bytes: 8, mtime: OLD },
    ["bad-stats-dir/stats.json/inside.txt"]: text("a directory where the file goes"),
    ["bad-stats-fifo/a.jpg"]: { bytes: 8, mtime: OLD }, // its stats.json: a FIFO (mkfifo)
  };
}

const BAD_KEYS = [
  "linked", // its stats.json is a link, which is not followed
  "bad-stats-dir",
  "bad-stats-fifo",
  "bad-invalid-json",
  "bad-empty",
  "bad-utf8",
  "bad-nul",
  "bad-lone-surrogate",
  "bad-too-deep",
  "zz-vanish",
  "zz-vanish-stats",
];

/** Names that are not valid UTF-8, made with the shell (Deno paths are strings). */
async function writeInvalidNames(base: string): Promise<void> {
  const out = await new Deno.Command("bash", {
    args: [
      "-c",
      `d="$(printf '%s/bad-name-\\377' "$1")" && mkdir -- "$d" && printf '{}' > "$d/stats.json"` +
      ` && printf 'x' > "$(printf '%s/withbadfile/\\376.jpg' "$1")"`,
      "_",
      base,
    ],
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
}

/** A dollar-quote tag that does not occur in `text`. */
function dollar(text: string): string {
  let tag = "$q$";
  for (let n = 0; text.includes(tag); n++) tag = `$q${n}$`;
  return `${tag}${text}${tag}`;
}

/**
 * Keys whose test_results differ from what the server itself makes of the stats.json
 * text on disk (so numbers and strings are compared exactly, not through JavaScript).
 */
async function serverMismatches(
  pg: PgServer,
  base: string,
  rows: Map<string, ExpectedRow>,
): Promise<string[]> {
  const values: string[] = [];
  for (const key of rows.keys()) {
    let text: string;
    try {
      const path = join(base, ...key.split("/"), "stats.json");
      if (Deno.lstatSync(path).isSymlink) continue;
      text = Deno.readTextFileSync(path).replace(/^\uFEFF/, "");
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) continue;
      throw error;
    }
    values.push(`(${dollar(key)}, ${dollar(text)})`);
  }
  const out = await pg.psql(
    `select coalesce(json_agg(v.k), '[]') from (values ${values.join(",\n")}) v(k, t)
     left join device_test d on d.folder_key = v.k
     where d.folder_key is null or coalesce(d.test_results, 'null') is distinct from v.t::jsonb`,
  );
  return JSON.parse(out);
}

Deno.test({
  name: "hostile input tree: good folders land exactly, bad ones fail alone and named",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withTempDir("fault_input_", async (dir) => {
        const base = join(dir, "base 'q' $$ \\ %_ ü");
        const dbPath = join(dir, "tracker.db");
        writeTree(base, { ...goodTree(), ...badTree() });
        await writeInvalidNames(base);
        const fifo = await new Deno.Command("mkfifo", {
          args: [join(base, "bad-stats-fifo", "stats.json")],
        }).output();
        assert.ok(fifo.success);
        const env = { SUPABASE_DB_URL: pg.url };

        // Run 1, slowed down so the last folders are read seconds after the scan.
        const p = startUploader(
          [
            base,
            "--db-path",
            dbPath,
            "--min-age",
            "0",
            "--batch-size",
            "4",
            "--parallel",
            "1",
            "--batch-delay",
            "0.35",
          ],
          { env },
        );
        await p.waitFor((e) => e.event === "batch_done");
        Deno.writeTextFileSync(join(base, "zz-change", "stats.json"), '{"version": 2}');
        Deno.writeFileSync(join(base, "zz-newimg", "b.jpg"), new Uint8Array(4));
        Deno.removeSync(join(base, "zz-vanish"), { recursive: true });
        Deno.removeSync(join(base, "zz-vanish-stats", "stats.json"));
        const first = await p.done;
        assert.equal(first.code, 1, describeExit(first));

        // Each bad folder failed alone, named in its message.
        const failed = first.events.filter((e) => e.event === "folder_failed");
        assert.deepEqual(failed.map((e) => e.key).sort(), [...BAD_KEYS].sort());
        const state = trackerState(dbPath);
        assert.equal(state.integrity, "ok");
        for (const key of BAD_KEYS) {
          const f = state.folders.find((r) => r.key === key);
          assert.equal(f?.status, "failed", key);
          assert.ok(f?.error?.includes(key), `the message for ${key} names it: ${f?.error}`);
        }
        const why = (key: string) => state.folders.find((r) => r.key === key)?.error;
        assert.match(why("bad-stats-fifo")!, /stats\.json: it is a FIFO, not a regular file$/);
        assert.match(why("bad-stats-dir")!, /stats\.json: it is a directory, not a regular file$/);
        assert.match(why("linked")!, /stats\.json: it is a symbolic link/);
        // Names that are not UTF-8 are reported, not uploaded, and stop nothing else.
        const problems = first.events.filter((e) => e.event === "problem");
        assert.equal(problems.length, 2, JSON.stringify(problems));
        assert.ok(problems.some((e) => String(e.path).startsWith(join(base, "bad-name-"))));
        assert.ok(problems.some((e) => String(e.path).startsWith(join(base, "withbadfile"))));

        // Every good folder landed as it is on disk (zz-newimg gained an image after its
        // snapshot: the next run brings it).
        let expected = expectedRows(base);
        assert.deepEqual(expected.bad.sort(), [
          "bad-empty",
          "bad-invalid-json",
          "bad-nul",
          "bad-stats-dir",
          "bad-stats-fifo",
          "bad-utf8",
          "linked",
        ]);
        const good = new Map(
          [...expected.rows].filter(([k]) => !BAD_KEYS.includes(k) && k !== "zz-newimg"),
        );
        assert.equal(good.size, 31);
        // The links of loopy/ (loops to the folders above) are said once each, not followed.
        const skipped = first.events.filter((e) => e.event === "skipped").map((e) => e.path);
        assert.deepEqual(
          skipped.sort(),
          ["loopy/self", "loopy/sub/back", "loopy/up"].map((p) => join(base, p)),
        );
        const table = await tableRows(pg);
        assertTableMatches(
          { ...table, rows: table.rows.filter((r) => r.key !== "zz-newimg") },
          good,
        );
        assert.deepEqual(table.rows.find((r) => r.key === "zz-newimg")?.images, ["a.jpg"]);
        assert.equal(
          JSON.stringify(table.rows.find((r) => r.key === "zz-change")?.testResults),
          '{"version":2}',
        );
        assert.deepEqual(await serverMismatches(pg, base, good), []);
        for (
          const key of ["Parent", "Parent/Child", "A/Run1", "B/Run1", "caf\u00e9", "cafe\u0301"]
        ) {
          assert.ok(good.has(key), key);
        }

        // Run 2: changed folders are read again, the bad ones fail again, nothing else moves.
        const second = await runUploader([base, "--db-path", dbPath, "--min-age", "0"], { env });
        assert.equal(second.code, 1, describeExit(second));
        // The links were said once; --status keeps listing them.
        assert.deepEqual(second.events.filter((e) => e.event === "skipped"), []);
        const status = JSON.parse((await runUploader(["--status", "--db-path", dbPath])).stdout);
        assert.equal(status.skippedTotal, 3);
        assert.equal(status.problemsTotal, 2, "the links are not counted as unreadable");
        expected = expectedRows(base);
        const stillBad = [
          "linked",
          "bad-stats-dir",
          "bad-stats-fifo",
          "bad-empty",
          "bad-invalid-json",
          "bad-nul",
          "bad-utf8",
          "bad-lone-surrogate",
          "bad-too-deep",
        ];
        const want = new Map([...expected.rows].filter(([k]) => !stillBad.includes(k)));
        assertTableMatches(await tableRows(pg), want);
        assert.deepEqual(await serverMismatches(pg, base, want), []);
        const after = trackerState(dbPath);
        for (const key of stillBad) {
          const f = after.folders.find((r) => r.key === key);
          assert.equal(f?.status, "failed", key);
          assert.equal(f?.retryCount, 2, key);
        }
        assert.equal(after.folders.find((r) => r.key === "zz-vanish-stats")?.status, "success");
        assert.ok(!after.batchStatuses.includes("running"));
      });
    } finally {
      await pg.close();
    }
  },
});
