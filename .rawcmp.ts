import { scanFolderChunks } from "./lib/source/walk.ts";
const base = "/tmp/t50k";
async function scan() { let n = 0; for await (const c of scanFolderChunks(base, { markerNames: new Set(["success.json"]) })) n += c.length; return n; }
function raw(dirStat: boolean) {
  let n = 0;
  for (const e of Deno.readDirSync(base)) {
    const d = `${base}/${e.name}`;
    if (dirStat) Deno.lstatSync(d);
    for (const f of Deno.readDirSync(d)) { Deno.lstatSync(`${d}/${f.name}`); n++; }
  }
  return n;
}
for (let k = 0; k < 3; k++) {
  let t = performance.now(); raw(false); const a = performance.now() - t;
  t = performance.now(); raw(true); const b = performance.now() - t;
  t = performance.now(); await scan(); const c = performance.now() - t;
  console.log(`raw ${a|0}  raw+dirstat ${b|0}  scan ${c|0}`);
}
