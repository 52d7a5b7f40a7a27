import { defineConfig } from 'vitest/config';

// Tests by what they need: test/unit (the library in TypeScript, simulated devices), test/sim (the
// simulator's own tests), test/contract (one suite against every binding and pump), test/native
// (the addon). test/kernel needs a real VFIO device in a guest and runs on its own (npm run test:kernel).
// Native code runs in forked processes, not worker threads: an addon or koffi crash takes down
// one fork, not the runner, and process-wide state (fds, /proc/self) is per test file.
export default defineConfig({
  test: {
    include: ['test/unit/**/*.test.ts', 'test/sim/**/*.test.ts', 'test/contract/**/*.test.ts', 'test/native/**/*.test.ts'],
    exclude: ['test/kernel/**', 'node_modules/**', 'dist/**'],
    setupFiles: ['test/helpers/setup.ts'],
    pool: 'forks',
    testTimeout: 20_000,
  },
});
