// Checks that the running Node satisfies `engines.node` in package.json (wrangler's own
// minimum). Runs before `npm run dev`, `npm run e2e` and in ci.sh; exits 1 with a clear
// message otherwise. Only the `>=X.Y.Z` form is supported, which is what package.json uses.

import { readFileSync } from "node:fs";

const manifest = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
const wanted = manifest.engines?.node ?? "";
const match = /^>=(\d+)\.(\d+)\.(\d+)$/.exec(wanted);
if (!match) {
  console.error(`check-node: package.json engines.node is "${wanted}", expected ">=X.Y.Z"`);
  process.exit(2);
}
const parts = (version) => version.split(".").map((part) => Number.parseInt(part, 10));
const [have, need] = [parts(process.versions.node), match.slice(1).map(Number)];
// The first component that differs decides (21.9.0 < 22.12.0 < 22.13.0 < 23.0.0).
const first = need.findIndex((part, i) => have[i] !== part);
const older = first !== -1 && have[first] < need[first];
if (older) {
  console.error(
    `edgechat-worker needs Node ${wanted} (wrangler's minimum); this is Node ${process.versions.node} (${process.execPath}).\n` +
      "Install Node 22 LTS (nodejs.org, nvm, fnm, Homebrew, winget), or run the command under\n" +
      "Node 22 from npm by putting `npx --yes -p node@22 --` before it, e.g. `npx --yes -p node@22 -- npm run dev`.",
  );
  process.exit(1);
}
console.log(`check-node: Node ${process.versions.node} satisfies ${wanted}`);
