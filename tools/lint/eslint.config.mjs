// The project's ESLint rules (loaded through ../../eslint.config.mjs, so
// patterns are relative to the repository root): typescript-eslint's
// recommended set on src/, test/, bin/ and the tools, with the few rules that
// fight the code's deliberate style turned off, each with its reason.
import js from '@eslint/js'
import { defineConfig } from 'eslint/config'
import tseslint from 'typescript-eslint'

export default defineConfig(
  { ignores: ['dist/', '**/node_modules/', 'test/fixtures/', 'coverage/'] },
  js.configs.recommended,
  tseslint.configs.recommended,
  {
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: 'module',
      globals: {
        // Node's globals, as the code runs on Node only
        process: 'readonly', Buffer: 'readonly', console: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly',
        setInterval: 'readonly', clearInterval: 'readonly', setImmediate: 'readonly', clearImmediate: 'readonly',
        queueMicrotask: 'readonly', URL: 'readonly', AbortController: 'readonly', AbortSignal: 'readonly',
        TextEncoder: 'readonly', TextDecoder: 'readonly', structuredClone: 'readonly', performance: 'readonly',
        fetch: 'readonly', globalThis: 'readonly', NodeJS: 'readonly', Event: 'readonly', EventTarget: 'readonly'
      }
    },
    rules: {
      // `any` marks the untyped boundaries on purpose (LevelDB's JSON values, libp2p components, socket answers in the client and tests); values are checked where read.
      '@typescript-eslint/no-explicit-any': 'off',
      // A leading _ names what is left unused on purpose: `const { sig: _, ...rest } = record`, an argument an interface requires.
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_', ignoreRestSiblings: true }],
      // An empty catch marks a best-effort step (cleanup, a retry loop's attempt): nothing is to be done when it fails.
      'no-empty': ['error', { allowEmptyCatch: true }],
      // A let that a closure defined earlier reads, assigned once later, stays a let (const would read as defined before it is).
      'prefer-const': ['error', { ignoreReadBeforeAssign: true }]
    }
  }
)
