import { scanFoldersInWorker } from "./lib/source/walkers.ts";
import { scanFolderChunks } from "./lib/source/walk.ts";
const base = Deno.args[0];
for (const workers of [0, 1, 2, 3]) {
  const t = performance.now(); let n = 0; let first = 0;
  const it = workers === 0 ? scanFolderChunks(base, { markerNames: new Set(["success.json", "failed.json"]) }) : scanFoldersInWorker(base, { workers, markerNames: ["success.json", "failed.json"] });
  for await (const c of it) { if (!first) first = performance.now() - t; n += c.length; }
  console.log(`workers ${workers}: ${n} items, first chunk ${Math.round(first)} ms, all ${Math.round(performance.now() - t)} ms`);
}
