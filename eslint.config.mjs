// ESLint lives in tools/lint (its own packages: see tools/lint/package.json); `npm run lint` runs it.
export { default } from './tools/lint/eslint.config.mjs'
