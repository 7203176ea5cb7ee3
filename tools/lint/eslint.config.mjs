// The project's ESLint rules (loaded through ../../eslint.config.mjs, so
// patterns are relative to the repository root): typescript-eslint's
// recommended set on src/, test/, bin/ and the tools, with the few rules that
// fight the code's deliberate style turned off, each with its reason.
import js from '@eslint/js'
import { defineConfig } from 'eslint/config'
import tseslint from 'typescript-eslint'

export default defineConfig(
  { ignores: ['dist/', '**/node_modules/', 'test/fixtures/', 'coverage/'] },
  // The CLI's entry point has no extension: named, so that `eslint .` lints it too.
  { files: ['bin/ntsoekhe'] },
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
  },
  {
    // uint8arrays is the byte toolkit (docs/design.md): bytes are converted, joined and compared with
    // it, not with Buffer's statics. A Buffer that an API demands keeps an eslint-disable with its reason.
    // Not in storage/, schema/ and sim/: their per-row hex and base64 stay on Buffer's native codecs
    // (uint8arrays' are JavaScript, several times slower).
    files: ['src/{api,backup,cli,client,cluster,daemon,observability,p2p,query,security,util}/**/*.ts', 'src/*.ts'],
    rules: {
      'no-restricted-properties': ['error', ...['from', 'concat', 'compare'].map(property => ({
        object: 'Buffer',
        property,
        message: 'use uint8arrays (fromString, toString, concat, compare, equals); where an API demands a Buffer, say why in an eslint-disable comment'
      }))]
    }
  }
)
