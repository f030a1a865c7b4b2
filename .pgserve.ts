import { startPostgres } from "./support/postgres.ts";
const s = await startPostgres({ maxConnections: 40 });
await Deno.writeTextFile("/tmp/pg.url", s.url);
console.log(s.url);
await new Promise(() => {});
