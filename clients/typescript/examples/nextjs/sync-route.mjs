// Copies the seed's chat route and the chat app's lib/ from ../../fixtures,
// their one source (type-checked there by `npm run check-route`), into this
// app before `next build`. The copies are not committed.
import { cpSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const fixtures = join(here, "..", "..", "fixtures");

for (const path of [join("app", "api", "chat", "route.ts"), "lib"]) {
  const target = join(here, path);
  rmSync(target, { recursive: true, force: true });
  mkdirSync(dirname(target), { recursive: true });
  cpSync(join(fixtures, path), target, { recursive: true });
}
