// The Ntsoekhe web console: reads the node's socket API through the console
// listener (`/api/v1/...`, GET only) with the user's token, and draws what it
// reads. Every value is put in the page as text (never as HTML). The token
// lives in this tab's sessionStorage and goes out only as an Authorization
// header to this origin.
/* global document, sessionStorage, Node */
'use strict'

const TOKEN_KEY = 'ntsoekhe-console-token'
const POLL_MS = 5000
const SVG = 'http://www.w3.org/2000/svg'
const COLORS = ['#2b6cb0', '#c05621', '#2f855a', '#6b46c1', '#b83280', '#2c7a7b', '#975a16', '#4a5568', '#9b2c2c', '#276749']
const HEAD_ROWS = 10

let timer
let polling = false

const $ = id => document.getElementById(id)

function token () {
  return sessionStorage.getItem(TOKEN_KEY)
}

/** GET /api<path>; a 401 signs out, any other failure throws with the API's message */
async function api (path) {
  const headers = {}
  const t = token()
  if (t) headers.authorization = `Bearer ${t}`
  const res = await fetch(`/api${path}`, { headers, cache: 'no-store' })
  let body
  try { body = await res.json() } catch { body = null }
  if (!res.ok) {
    const err = new Error(body?.error?.message ?? `${res.status} ${res.statusText}`)
    err.status = res.status
    throw err
  }
  return body
}

function el (tag, attrs = {}, ...children) {
  const node = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v
    else node.setAttribute(k, v)
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? '')))
  return node
}

function svg (tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag)
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v))
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)))
  return node
}

function showLogin (message) {
  stopPolling()
  $('dashboard').hidden = true
  $('signout').hidden = true
  $('login').hidden = false
  $('login-error').textContent = message ?? ''
  $('token').focus()
}

function showDashboard () {
  $('login').hidden = true
  $('dashboard').hidden = false
  $('signout').hidden = token() === null
}

function stopPolling () {
  if (timer !== undefined) clearTimeout(timer)
  timer = undefined
}

/** One round of reads; a 401 sends the user back to sign in */
async function refresh () {
  if (polling) return
  polling = true
  try {
    const [status, peers, ring, series] = await Promise.all([api('/v1/status'), api('/v1/peers'), api('/v1/ring'), api('/v1/metrics/series')])
    showDashboard()
    $('error').hidden = true
    drawHeader(status)
    drawMembers(peers.members ?? [], ring)
    drawRing(ring)
    drawReplication(status)
    drawCharts(series.points ?? [])
    drawRowCounts(status)
    if ($('table-select').options.length === 0) await loadTables()
  } catch (err) {
    if (err.status === 401) {
      const had = token() !== null
      sessionStorage.removeItem(TOKEN_KEY)
      showLogin(had ? `Refused: ${err.message}` : 'This node has users: sign in with a token.')
      return
    }
    if (!$('dashboard').hidden) {
      $('error').hidden = false
      $('error').textContent = `Could not read the node: ${err.message}`
    } else {
      showLogin(`Refused: ${err.message}`)
      return
    }
  } finally {
    polling = false
  }
  stopPolling()
  timer = setTimeout(() => { void refresh() }, POLL_MS)
}

function drawHeader (status) {
  $('node').textContent = `node ${status.peerId} · version ${status.version} · up ${Math.round((status.uptimeMs ?? 0) / 1000)} s`
  $('updated').textContent = `updated ${new Date().toLocaleTimeString()}`
}

function colorOf (index) {
  return COLORS[index % COLORS.length]
}

/** Members in the ring's order, so a member keeps its color in the table and the ring */
function ordered (ring) {
  return [...(ring.members ?? [])].sort((a, b) => a.peerId < b.peerId ? -1 : 1)
}

function drawMembers (members, ring) {
  const order = ordered(ring).map(m => m.peerId)
  const share = new Map((ring.members ?? []).map(m => [m.peerId, m.share]))
  const body = $('members').tBodies[0]
  body.replaceChildren(...[...members].sort((a, b) => a.peerId < b.peerId ? -1 : 1).map(m => {
    const i = order.indexOf(m.peerId)
    const swatch = el('span', { class: 'swatch' })
    if (i >= 0) swatch.style.background = colorOf(i)
    return el('tr', { 'data-peer': m.peerId },
      el('td', {}, swatch),
      el('td', { class: 'peer' }, m.peerId),
      el('td', { class: `state-${m.state}` }, m.state),
      el('td', { class: 'num' }, share.has(m.peerId) ? `${(share.get(m.peerId) * 100).toFixed(1)}%` : '-'),
      el('td', {}, m.connected ? 'yes' : 'no'),
      el('td', {}, m.lastSeen ? new Date(m.lastSeen).toLocaleTimeString() : ''))
  }))
}

/** A donut: one arc per member, as long as its share of the token space */
function drawRing (ring) {
  const size = 260
  const r = 100
  const c = size / 2
  const root = svg('svg', { viewBox: `0 0 ${size} ${size}`, role: 'img', id: 'ring-svg' })
  root.append(svg('title', {}, `Ring of ${ring.members?.length ?? 0} members, ${ring.replicas} replicas of every record`))
  root.append(svg('circle', { cx: c, cy: c, r, fill: 'none', stroke: '#e2e8f0', 'stroke-width': 28 }))
  let angle = -Math.PI / 2
  for (const [i, m] of ordered(ring).entries()) {
    const share = Math.max(0, Math.min(1, Number(m.share) || 0))
    if (share === 0) continue
    const arc = share >= 0.9999
      ? svg('circle', { cx: c, cy: c, r, fill: 'none' })
      : svg('path', { d: arcPath(c, r, angle, angle + share * 2 * Math.PI), fill: 'none' })
    arc.setAttribute('stroke', colorOf(i))
    arc.setAttribute('stroke-width', '28')
    // A member that is not up keeps its share of the ring, drawn faded and dashed: its copies are missing until it returns.
    const up = m.state === 'alive' || m.state === undefined
    arc.setAttribute('class', up ? 'ring-arc' : `ring-arc ring-arc-${m.state}`)
    arc.setAttribute('data-state', m.state ?? 'alive')
    arc.setAttribute('data-peer', m.peerId)
    arc.append(svg('title', {}, `${m.peerId}: ${(share * 100).toFixed(1)}% (${m.state})`))
    root.append(arc)
    angle += share * 2 * Math.PI
  }
  root.append(svg('text', { x: c, y: c - 4, 'text-anchor': 'middle', 'font-size': 22 }, String(ring.members?.length ?? 0)))
  root.append(svg('text', { x: c, y: c + 16, 'text-anchor': 'middle', 'font-size': 12, fill: '#5d6b73' }, `members, N=${ring.replicas}`))
  $('ring').replaceChildren(root)
}

function arcPath (c, r, from, to) {
  const x0 = c + r * Math.cos(from)
  const y0 = c + r * Math.sin(from)
  const x1 = c + r * Math.cos(to)
  const y1 = c + r * Math.sin(to)
  const large = to - from > Math.PI ? 1 : 0
  return `M ${x0.toFixed(2)} ${y0.toFixed(2)} A ${r} ${r} 0 ${large} 1 ${x1.toFixed(2)} ${y1.toFixed(2)}`
}

function drawReplication (status) {
  const rep = status.replication ?? {}
  const ae = rep.antiEntropy ?? {}
  const rb = rep.rebalance ?? {}
  const ok = rep.health === 'ok'
  const items = [
    ['Health', el('span', { class: ok ? 'health-ok' : 'health-bad', id: 'health' }, rep.health ?? 'unknown')],
    ['Live members', `${rep.liveMembers} (${rep.effectiveReplicas} of N=${status.replicas} replicas possible)`],
    ['Quorums', `W=${status.writeQuorum}, R=${status.readQuorum}`],
    ['Hints pending', rep.pendingHints],
    ['Rebalance', rb.running
      ? `running: ${rb.running.records} records looked at, ${rb.running.sent} sent, ${rb.running.dropped} dropped, ${rb.running.failed} failed so far`
      : rb.pending ? 'pending' : rb.last ? `idle; last sent ${rb.last.sent}, failed ${rb.last.failed}` : 'idle'],
    ['Anti-entropy', ae.running
      ? `running: ${ae.progress ? `${ae.progress.done}/${ae.progress.total} ranges` : 'starting'}`
      : ae.lastRoundAt ? `last round ${new Date(ae.lastRoundAt).toLocaleTimeString()}: ${ae.rangesDiffering} of ${ae.ranges} ranges differed, ${ae.recordsSent} records sent` : 'no round yet'],
    ['Event loop delay', `p99 ${status.eventLoopDelayMs?.p99 ?? '?'} ms`]
  ]
  $('replication').replaceChildren(...items.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]))
}

/** A line chart of `lines` ({ key, color, label }) over the points' times */
function lineChart (points, lines, unit) {
  const w = 600
  const h = 160
  const pad = { l: 48, r: 8, t: 10, b: 22 }
  const root = svg('svg', { viewBox: `0 0 ${w} ${h}`, role: 'img', class: 'line-chart' })
  if (points.length === 0) {
    root.append(svg('text', { x: w / 2, y: h / 2, 'text-anchor': 'middle', fill: '#5d6b73', 'font-size': 13 }, 'collecting: the first point comes within 5 seconds'))
    return root
  }
  const t1 = points[points.length - 1].time
  const t0 = Math.min(points[0].time, t1 - 60_000)
  const values = points.flatMap(p => lines.map(l => p[l.key])).filter(v => typeof v === 'number')
  // No request in the window (or none that took time): the scale is 0 to 1 rather than 0 to nothing.
  const max = (Math.max(0, ...values) || 1) * 1.1
  const x = t => pad.l + (t - t0) / (t1 - t0) * (w - pad.l - pad.r)
  const y = v => h - pad.b - v / max * (h - pad.t - pad.b)
  root.append(svg('line', { x1: pad.l, y1: h - pad.b, x2: w - pad.r, y2: h - pad.b, stroke: '#a0aec0' }))
  root.append(svg('line', { x1: pad.l, y1: pad.t, x2: pad.l, y2: h - pad.b, stroke: '#a0aec0' }))
  root.append(svg('text', { x: pad.l - 4, y: pad.t + 10, 'text-anchor': 'end', 'font-size': 11 }, `${format(max / 1.1)}${unit}`))
  root.append(svg('text', { x: pad.l - 4, y: h - pad.b, 'text-anchor': 'end', 'font-size': 11 }, '0'))
  root.append(svg('text', { x: pad.l, y: h - 6, 'font-size': 11 }, `${Math.round((t1 - t0) / 60_000)} min ago`))
  root.append(svg('text', { x: w - pad.r, y: h - 6, 'text-anchor': 'end', 'font-size': 11 }, 'now'))
  for (const [i, line] of lines.entries()) {
    const pts = points.filter(p => typeof p[line.key] === 'number')
    root.append(svg('polyline', { points: pts.map(p => `${x(p.time).toFixed(1)},${y(p[line.key]).toFixed(1)}`).join(' '), fill: 'none', stroke: line.color, 'stroke-width': 2, 'data-series': line.key }))
    for (const p of pts.slice(-1)) root.append(svg('circle', { cx: x(p.time).toFixed(1), cy: y(p[line.key]).toFixed(1), r: 3, fill: line.color }))
    root.append(svg('text', { x: w - pad.r - 4, y: pad.t + 12 + i * 14, 'text-anchor': 'end', 'font-size': 11, fill: line.color }, line.label))
  }
  return root
}

function format (n) {
  return n >= 100 ? Math.round(n).toString() : n >= 1 ? n.toFixed(1) : n.toFixed(3)
}

function drawCharts (points) {
  $('rate-chart').replaceChildren(lineChart(points, [{ key: 'rate', color: COLORS[0], label: 'requests/s' }], '/s'))
  $('latency-chart').replaceChildren(lineChart(points, [{ key: 'p50', color: COLORS[2], label: 'p50' }, { key: 'p95', color: COLORS[1], label: 'p95' }], ' ms'))
}

function drawRowCounts (status) {
  const network = status.networkRows ?? { tables: {}, complete: true, unanswered: [] }
  const local = status.storage?.rows ?? {}
  const tables = [...new Set([...Object.keys(network.tables ?? {}), ...Object.keys(local)])].sort()
  $('row-counts').tBodies[0].replaceChildren(...tables.map(t => el('tr', { 'data-table': t },
    el('td', {}, t),
    el('td', { class: 'num' }, network.tables?.[t] ?? 0),
    el('td', { class: 'num' }, local[t] ?? 0))))
  $('row-counts-note').textContent = network.complete
    ? 'Every record counted once, whichever members hold its copies.'
    : `Incomplete: ${network.unanswered.length} member(s) did not answer (${network.unanswered.join(', ')}).`
}

async function loadTables () {
  const { tables } = await api('/v1/tables')
  const select = $('table-select')
  select.replaceChildren(...tables.map(t => el('option', { value: t.name }, t.name)))
  await showHead()
}

/** The first rows of the chosen table, as the user's role may read them */
async function showHead () {
  const table = $('table-select').value
  if (!table) return
  const out = $('head')
  out.replaceChildren(el('p', { class: 'muted' }, `reading ${table}…`))
  try {
    const { rows } = await api(`/v1/tables/${encodeURIComponent(table)}/rows?limit=${HEAD_ROWS}`)
    if (rows.length === 0) { out.replaceChildren(el('p', { class: 'muted', id: 'head-empty' }, `${table} has no rows.`)); return }
    const columns = [...new Set(rows.flatMap(r => Object.keys(r)))]
    out.replaceChildren(el('table', { id: 'head-table', 'data-table': table },
      el('thead', {}, el('tr', {}, ...columns.map(c => el('th', {}, c)))),
      el('tbody', {}, ...rows.map(r => el('tr', {}, ...columns.map(c => el('td', {}, r[c] === null || r[c] === undefined ? '' : typeof r[c] === 'object' ? JSON.stringify(r[c]) : r[c])))))))
  } catch (err) {
    if (err.status === 401) { showLogin(`Refused: ${err.message}`); return }
    out.replaceChildren(el('p', { class: 'health-bad', id: 'head-refused' }, err.status === 403 ? `Not shown: ${err.message}` : `Could not read ${table}: ${err.message}`))
  }
}

function init () {
  $('login-form').addEventListener('submit', ev => {
    ev.preventDefault()
    const t = $('token').value.trim()
    if (t === '') return
    sessionStorage.setItem(TOKEN_KEY, t)
    $('token').value = ''
    $('login-error').textContent = ''
    void refresh()
  })
  $('signout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY)
    $('table-select').replaceChildren()
    $('head').replaceChildren()
    showLogin('Signed out.')
  })
  $('table-select').addEventListener('change', () => { void showHead() })
  $('head-refresh').addEventListener('click', () => { void showHead() })
  void refresh()
}

init()
