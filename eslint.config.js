// @ts-check
import tseslint from 'typescript-eslint';
import floors from './eslint/floors.js';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'bpf/**', '**/*.js', '**/*.cjs'] },
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/consistent-type-imports': 'error',
    },
  },
  {
    files: ['src/**/*.ts'],
    plugins: { floors },
    rules: { 'floors/floors': 'error' },
  },
);
