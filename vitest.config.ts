import { defineConfig } from 'vitest/config';

// Kernel tests create namespaces and veths named per test file, so files may run in parallel;
// the machine has two cores, so two workers.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    maxWorkers: 2,
    reporters: ['default'],
  },
});
