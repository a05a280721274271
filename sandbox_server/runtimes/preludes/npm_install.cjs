'use strict';
// Installs npm packages for a session without letting the session steer npm.
//
//   node npm_install.cjs TARGET NPM [NPM-ARGS...] -- PACKAGE
//
// npm reads .npmrc, package.json and node_modules (with lockfile URLs) from
// its prefix and from HOME; the session's own folder is writable by its code.
// So npm runs in a fresh private folder with nothing the code wrote, and only
// the installed node_modules is then copied into TARGET/node_modules.

const fs = require('fs');
const os = require('os');
const path = require('path');
const { spawnSync } = require('child_process');

const [target, npm, ...args] = process.argv.slice(2);
const staging = fs.mkdtempSync(path.join(os.tmpdir(), 'oasis-npm-'));
try {
  const done = spawnSync(
    npm,
    ['install', '--prefix', staging, '--cache', path.join(staging, 'cache'),
     '--userconfig', path.join(staging, 'no-user-config'), ...args],
    { stdio: 'inherit', env: { ...process.env, HOME: staging }, cwd: staging },
  );
  if (done.error) throw done.error;
  if (done.status !== 0) process.exitCode = done.status ?? 1;
  else {
    fs.cpSync(path.join(staging, 'node_modules'), path.join(target, 'node_modules'), {
      recursive: true,
      force: true,
    });
  }
} finally {
  fs.rmSync(staging, { recursive: true, force: true });
}
