// Type-aware lint at zero warnings (`npm run lint` runs with --max-warnings 0).
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    ignores: [
      'node_modules/**',
      'packages/*/bin/**',
      '**/dist/**',
      'coverage/**',
      '.tmp/**',
      'eslint.config.js',
    ],
  },
  ...tseslint.configs.strictTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/restrict-template-expressions': ['error', { allowNumber: true }],
      '@typescript-eslint/no-unnecessary-condition': ['error', { allowConstantLoopConditions: true }],
      '@typescript-eslint/no-non-null-assertion': 'off',
      '@typescript-eslint/no-extraneous-class': 'off',
      '@typescript-eslint/prefer-literal-enum-member': 'off',
      'no-console': 'off',
    },
  },
  {
    files: ['packages/*/test/**', 'bench/**'],
    rules: {
      '@typescript-eslint/no-floating-promises': 'off',
    },
  },
);
