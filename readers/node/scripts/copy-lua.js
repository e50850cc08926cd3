// Copies the Lua scripts both reader libraries share (readers/lua/) into
// dist/lua/, so the package carries them (package.json "files"): the built
// code reads them from there, never from outside the package.
const { copyFileSync, mkdirSync } = require('node:fs');
const { resolve } = require('node:path');

const from = resolve(__dirname, '..', '..', 'lua');
const to = resolve(__dirname, '..', 'dist', 'lua');
mkdirSync(to, { recursive: true });
for (const name of ['read.lua', 'release.lua']) copyFileSync(resolve(from, name), resolve(to, name));
