// The npm package holds exactly the module, its types, the README and
// package.json, at the version the module says it is.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { VERSION } from "../tablecast.js";

const dir = fileURLToPath(new URL("..", import.meta.url));

test("npm pack --dry-run lists exactly the intended files", { timeout: 60_000 }, async (t) => {
  const r = spawnSync("npm", ["pack", "--dry-run", "--json"], {
    cwd: dir,
    encoding: "utf8",
    env: { ...process.env, npm_config_update_notifier: "false", npm_config_fund: "false", npm_config_audit: "false" },
  });
  if (r.error?.code === "ENOENT") {
    if (process.env.CI === "true") assert.fail("no npm in PATH");
    t.skip("no npm in PATH");
    return;
  }
  assert.equal(r.status, 0, r.stderr);
  const [pack] = JSON.parse(r.stdout);
  assert.deepEqual(pack.files.map((f) => f.path).sort(), ["README.md", "package.json", "tablecast.d.ts", "tablecast.js"]);
  const pkg = JSON.parse(await readFile(new URL("../package.json", import.meta.url), "utf8"));
  assert.equal(pack.name, pkg.name);
  assert.equal(pkg.version, VERSION, "package.json and tablecast.js agree on the version");
  assert.equal(pkg.type, "module");
  assert.deepEqual(pkg.exports["."], { types: "./tablecast.d.ts", default: "./tablecast.js" });
  assert.equal(pkg.types, "./tablecast.d.ts");
  assert.equal(pkg.dependencies, undefined, "no runtime dependencies");
});
