/** Stand-alone entry: `node packages/server/src/main.ts [flags]` (the CLI's `rotor server` does the same). */
import { problemFor } from './errors.ts';
import { runServer } from './server.ts';

if (import.meta.main) {
  try {
    process.exitCode = await runServer(process.argv.slice(2));
  } catch (e) {
    const p = problemFor(e);
    process.stderr.write(
      `error: ${p.code}: ${p.code === 'INTERNAL' && e instanceof Error ? e.message : p.detail}\n`,
    );
    process.exitCode = 1;
  }
}
