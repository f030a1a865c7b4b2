import { scanFolderChunks } from "./lib/source/walk.ts";
const base = Deno.args[0];
const t = performance.now(); let n = 0;
for await (const c of scanFolderChunks(base, { markerNames: new Set(["success.json", "failed.json"]) })) n += c.length;
console.log(`${n} items ${Math.round(performance.now() - t)} ms`);
