import { scanFolderChunks } from "./lib/source/walk.ts";
const base = "/tmp/t50k";
async function scan(o: Record<string, unknown>) { let n = 0; for await (const c of scanFolderChunks(base, { markerNames: new Set(["success.json"]), ...o })) n += c.length; return n; }
for (let k = 0; k < 3; k++) {
  const r: string[] = [];
  for (const [name, o] of [["stream", {}], ["sync", { streamDirBytes: Infinity }], ["stream2", {}]] as const) {
    const t = performance.now(); await scan(o); r.push(`${name} ${(performance.now() - t) | 0}`);
  }
  console.log(r.join("  "));
}
