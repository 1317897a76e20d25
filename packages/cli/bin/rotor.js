#!/usr/bin/env node
// The `rotor` command. Rotor runs its TypeScript sources directly (Node >= 22.18 strips types).
const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 18)) {
  console.error(
    `rotor needs Node.js 22.18+ or 24 LTS (this is ${process.version}); run it through npm (npm run rotor -- ...).`,
  );
  process.exit(2);
}
await import('../src/main.ts');
