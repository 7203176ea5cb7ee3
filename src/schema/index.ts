export * from './tables.js'
export * from './validate.js'
