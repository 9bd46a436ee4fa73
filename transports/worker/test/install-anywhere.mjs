// Proves that installing the Worker's npm packages needs nothing platform-specific:
//
// 1. Every package in package-lock.json that names an `os`, `cpu` or `libc` is optional
//    (npm skips an optional package that does not fit; it refuses a required one with
//    EBADPLATFORM). Checked for each target below with npm's own rule.
// 2. For each target, `npm install --dry-run --os <os> --cpu <cpu>` in a temporary copy
//    succeeds and picks that target's workerd and esbuild binaries.
// 3. The committed package-lock.json is exactly what npm writes for package.json.
//
//   node test/install-anywhere.mjs [dir]      (run by ci.sh; needs the npm registry)
//
// `dir` (default: this crate) holds the package.json and package-lock.json to check.

import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

const crateDir = path.resolve(process.argv[2] ?? path.join(import.meta.dirname, ".."));
const lockText = readFileSync(path.join(crateDir, "package-lock.json"), "utf8");
const lock = JSON.parse(lockText);

/** Where wrangler runs: workerd's and esbuild's names for each. */
const TARGETS = [
  { os: "darwin", cpu: "arm64", workerd: "darwin-arm64" },
  { os: "darwin", cpu: "x64", workerd: "darwin-64" },
  { os: "linux", cpu: "arm64", workerd: "linux-arm64" },
  { os: "linux", cpu: "x64", workerd: "linux-64" },
  { os: "win32", cpu: "x64", workerd: "windows-64" },
];

/** npm's rule (npm-install-checks): `!x` excludes x; any plain entry must match. */
function fits(list, value) {
  if (list === undefined) return true;
  const entries = Array.isArray(list) ? list : [list];
  if (entries.includes(`!${value}`)) return false;
  const wanted = entries.filter((entry) => !entry.startsWith("!"));
  return wanted.length === 0 || wanted.includes(value) || wanted.includes("any");
}

let [passed, failed] = [0, 0];
function fail(message) {
  console.error(`FAIL ${message}`);
  failed += 1;
}

for (const target of TARGETS) {
  const misfits = Object.entries(lock.packages ?? {}).filter(
    ([where, entry]) =>
      where !== "" &&
      !entry.optional &&
      (!fits(entry.os, target.os) || !fits(entry.cpu, target.cpu) || entry.libc !== undefined),
  );
  for (const [where] of misfits) {
    fail(`${where} is required but cannot install on ${target.os}-${target.cpu} (EBADPLATFORM)`);
  }
  if (misfits.length === 0) passed += 1;
}

const scratch = mkdtempSync(path.join(tmpdir(), "edgechat-install-anywhere-"));
try {
  for (const file of ["package.json", "package-lock.json"]) {
    cpSync(path.join(crateDir, file), path.join(scratch, file));
  }
  const npm = (...args) =>
    execFileSync("npm", [...args, "--ignore-scripts", "--no-audit", "--no-fund"], {
      cwd: scratch,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
      shell: process.platform === "win32",
    });
  for (const target of TARGETS) {
    const name = `${target.os}-${target.cpu}`;
    let out;
    try {
      out = npm("install", "--dry-run", "--os", target.os, "--cpu", target.cpu);
    } catch (error) {
      fail(`npm install --dry-run --os ${target.os} --cpu ${target.cpu}: ${error.stderr || error.message}`);
      continue;
    }
    const missing = [`@cloudflare/workerd-${target.workerd}`, `@esbuild/${name}`].filter(
      (binary) => !out.includes(`add ${binary} `),
    );
    for (const binary of missing) fail(`${name}: npm would not install ${binary}`);
    if (missing.length > 0) continue;
    passed += 1;
    console.log(`ok ${name}: npm install --dry-run --os ${target.os} --cpu ${target.cpu}`);
  }
  npm("install", "--package-lock-only");
  if (readFileSync(path.join(scratch, "package-lock.json"), "utf8") !== lockText) {
    fail("package-lock.json is not what `npm install` writes: run `npm install` and commit the lockfile");
  } else {
    passed += 1;
    console.log("ok package-lock.json is what npm writes");
  }
} finally {
  rmSync(scratch, { recursive: true, force: true });
}

console.log(`install-anywhere: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
