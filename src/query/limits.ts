/** Rows a list answers when no limit is given */
export const DEFAULT_LIMIT = 100
/** Most rows one list page holds (a larger limit is refused; the cursor pages on) */
export const MAX_LIMIT = 1000
