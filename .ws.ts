import { walkSubfolders } from "./lib/source/walk.ts";
const base = "/tmp/t50k";
const names = [...Deno.readDirSync(base)].map((e) => e.name);
async function* one() { yield names; }
for (let k = 0; k < 3; k++) {
  let t = performance.now(); let n = 0;
  for await (const c of walkSubfolders(base, one(), { markerNames: new Set(["success.json"]) })) n += c.length;
  const a = performance.now() - t;
  t = performance.now();
  for (const nm of names) { const d = `${base}/${nm}`; Deno.lstatSync(d); for (const f of Deno.readDirSync(d)) Deno.lstatSync(`${d}/${f.name}`); }
  const b = performance.now() - t;
  console.log(`walkSubfolders ${a | 0} (${n})  raw ${b | 0}`);
}
