#!/usr/bin/env bash
# The browser test, as CI runs it: installs Debian's Chromium and playwright-core if missing,
# builds the server, then runs two users in two tabs against it, and the signed-in link and
# origin tests, and the admin page with moderation seen from two chat tabs.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
[ -d node_modules/playwright-core ] || npm install --no-audit --no-fund
cargo build -p edgechat-server
node --test browser.test.mjs auth.test.mjs admin.test.mjs
