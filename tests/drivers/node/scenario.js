// The shared driver scenario for node-postgres (pg) + pg-copy-streams, plus named statements
// reused across many pooled transactions. Driver defaults everywhere: text-format parameters,
// unnamed statements unless a query carries a `name`.
//
//   PGSIDECAR_DSN=postgres://user:pw@host:port/db node scenario.js
'use strict'

const pg = require('pg')
const { from: copyFrom, to: copyTo } = require('pg-copy-streams')
const { pipeline } = require('node:stream/promises')
const { Readable, Writable } = require('node:stream')
const assert = require('node:assert/strict')

const DSN = process.env.PGSIDECAR_DSN
if (!DSN) {
  console.error('PGSIDECAR_DSN is not set (the proxy\'s postgres:// URL)')
  process.exit(2)
}
const CONCURRENCY = Number(process.env.DRIVER_CONNECTIONS || 20)
const REPEAT = 50
const P = 'drv_node'
const cfg = { connectionString: DSN, connectionTimeoutMillis: 10000 }

// ---- the values of step (a) -----------------------------------------------------------------
const NUMERIC = '12345.6789' // pg returns numeric as a string (no precision loss)
const JSONV = { a: [1, 2, { b: null }], s: 'Grüße 東京 🚀', n: 1.5 }
const TS_TEXT = '2024-02-29T13:14:15.123456Z' // JS Dates have millisecond precision: sent as text
const TS_MS = Date.UTC(2024, 1, 29, 13, 14, 15, 123)
const INTS = [1, 2, 3, -4, 2147483647]
const TEXTS = ['a', 'b c', 'Grüße', 'x,y', 'q"q', '東京']
const BYTES = Buffer.from([0, 1, 2, 0xff, 0, 0x41, 0x42, 0x43, 0])
const TEXT = 'Grüße 東京 🚀'
const BIGINT = '9223372036854775807' // pg returns int8 as a string

const SERVER_CHECK = `SELECT n = 12345.6789 AS numeric,
  j = '{"a": [1, 2, {"b": null}], "s": "Grüße 東京 🚀", "n": 1.5}'::jsonb AS jsonb,
  ts = '2024-02-29 13:14:15.123456+00'::timestamptz AS timestamptz,
  ia = '{1,2,3,-4,2147483647}'::int[] AS int_array,
  ta = ARRAY['a','b c','Grüße','x,y','q"q','東京'] AS text_array,
  b = '\\x000102ff0041424300'::bytea AS bytea,
  nul IS NULL AS null, t = 'Grüße 東京 🚀' AS text, bo IS TRUE AS bool,
  bi = 9223372036854775807 AS bigint
  FROM ${P}_types WHERE id = 1`

async function connect (extra = {}) {
  const c = new pg.Client({ ...cfg, ...extra })
  c.on('error', () => {}) // reported through the failing query instead
  await c.connect()
  return c
}

async function withClient (fn, extra) {
  const c = await connect(extra)
  try {
    return await fn(c)
  } finally {
    await c.end().catch(() => {})
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function expectCode (err, code, what) {
  if (!err || err.code !== code) {
    throw new Error(`${what}: expected SQLSTATE ${code}, got ${err ? `${err.code}: ${err.message}` : 'success'}`)
  }
}

async function expectError (promise, code, what) {
  let err = null
  try {
    await promise
  } catch (e) {
    err = e
  }
  expectCode(err, code, what)
}

function eq (what, got, want) {
  try {
    assert.deepStrictEqual(got, want)
  } catch {
    throw new Error(`${what}: got ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`)
  }
}

// ---- steps -----------------------------------------------------------------------------------
async function setup () {
  await withClient(async (c) => {
    for (const sql of [
      `DROP TABLE IF EXISTS ${P}_types, ${P}_items, ${P}_copy, ${P}_named`,
      `DROP SCHEMA IF EXISTS ${P}_g CASCADE`,
      `CREATE TABLE ${P}_types (id int PRIMARY KEY, n numeric, j jsonb, ts timestamptz, ia int[],
         ta text[], b bytea, nul text, t text, bo bool, bi bigint)`,
      `CREATE TABLE ${P}_items (id int PRIMARY KEY, name text NOT NULL)`,
      `CREATE TABLE ${P}_copy (id int PRIMARY KEY, name text, note text)`,
      `CREATE TABLE ${P}_named (id int PRIMARY KEY, worker int, v text)`,
      `CREATE SCHEMA ${P}_g`,
      `CREATE TABLE ${P}_g.probe (v text)`,
      `INSERT INTO ${P}_g.probe VALUES ('${P}')`
    ]) await c.query(sql)
  })
}

function compareTypes (prefix, row) {
  const [n, j, ts, ia, ta, b, nul, t, bo, bi] = row
  eq(`${prefix} numeric`, n, NUMERIC)
  eq(`${prefix} jsonb`, j, JSONV)
  if (!(ts instanceof Date) || ts.getTime() !== TS_MS) throw new Error(`${prefix} timestamptz: got ${ts}`)
  eq(`${prefix} int[]`, ia, INTS)
  eq(`${prefix} text[]`, ta, TEXTS)
  if (!Buffer.isBuffer(b) || !b.equals(BYTES)) throw new Error(`${prefix} bytea: got ${b && b.toString('hex')}`)
  eq(`${prefix} null`, nul, null)
  eq(`${prefix} text`, t, TEXT)
  eq(`${prefix} bool`, bo, true)
  eq(`${prefix} bigint`, bi, BIGINT)
}

async function stepTypes () {
  const values = [NUMERIC, JSONV, TS_TEXT, INTS, TEXTS, BYTES, null, TEXT, true, BIGINT]
  await withClient(async (c) => {
    await c.query(`INSERT INTO ${P}_types (id, n, j, ts, ia, ta, b, nul, t, bo, bi)
      VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`, values)
    let r = await c.query({ text: `SELECT n, j, ts, ia, ta, b, nul, t, bo, bi FROM ${P}_types WHERE id = $1`, values: [1], rowMode: 'array' })
    compareTypes('stored', r.rows[0])
    r = await c.query({ text: SERVER_CHECK, rowMode: 'array' })
    const names = r.fields.map((f) => f.name)
    const bad = names.filter((_, i) => r.rows[0][i] !== true)
    if (bad.length) throw new Error(`server-side comparison failed for: ${bad.join(', ')}`)
    r = await c.query({
      text: `SELECT $1::numeric, $2::jsonb, $3::timestamptz, $4::int[], $5::text[], $6::bytea,
        $7::text, $8::text, $9::bool, $10::bigint`,
      values,
      rowMode: 'array'
    })
    compareTypes('echo', r.rows[0])
  })
}

const B_QUERY = `SELECT $1::int * 2 AS doubled, $2::text AS tag, pg_backend_pid() AS pid /* ${P} b */`

async function stepPreparedConcurrency () {
  const clients = await Promise.all(Array.from({ length: CONCURRENCY }, () => connect()))
  try {
    const results = await Promise.all(clients.map(async (c, n) => {
      const pids = []
      for (let i = 0; i < REPEAT; i++) {
        const values = [n * 1000 + i, `c${n}-${i}`]
        // Even iterations: a named (prepared) statement; odd ones: the default unnamed one.
        const q = i % 2 === 0 ? { name: `${P}_b`, text: B_QUERY, values } : { text: B_QUERY, values }
        let r
        if (i % 10 === 9) {
          await c.query('BEGIN')
          r = await c.query(q)
          await c.query('COMMIT')
        } else {
          r = await c.query(q)
        }
        const row = r.rows[0]
        if (row.doubled !== 2 * values[0] || row.tag !== values[1]) {
          throw new Error(`connection ${n} iteration ${i}: got (${row.doubled}, ${row.tag}), expected (${2 * values[0]}, ${values[1]})`)
        }
        pids.push(row.pid)
      }
      return pids
    }))
    const backends = new Set(results.flat())
    const moved = results.filter((p) => new Set(p).size > 1).length
    return `${CONCURRENCY}x${REPEAT} executions on ${backends.size} backends; ${moved}/${CONCURRENCY} connections moved between backends`
  } finally {
    await Promise.all(clients.map((c) => c.end().catch(() => {})))
  }
}

async function stepTransactions () {
  await withClient(async (c) => withClient(async (other) => {
    const count = async (cl, id) => Number((await cl.query(`SELECT count(*) FROM ${P}_items WHERE id = $1`, [id])).rows[0].count)
    await c.query('BEGIN')
    await c.query(`INSERT INTO ${P}_items VALUES ($1, $2)`, [1, 'rolled back'])
    eq('own uncommitted insert visible', await count(c, 1), 1)
    await c.query('ROLLBACK')
    eq('after rollback (same connection)', await count(c, 1), 0)
    eq('after rollback (other connection)', await count(other, 1), 0)
    await c.query('BEGIN')
    await c.query(`INSERT INTO ${P}_items VALUES ($1, $2)`, [2, 'committed'])
    await c.query('COMMIT')
    eq('after commit (other connection)', (await other.query(`SELECT name FROM ${P}_items WHERE id = 2`)).rows[0].name, 'committed')
    await c.query('BEGIN')
    await c.query(`INSERT INTO ${P}_items VALUES (3, 'outer')`)
    await c.query('SAVEPOINT s1')
    await c.query(`INSERT INTO ${P}_items VALUES (4, 'inner')`)
    await c.query('ROLLBACK TO SAVEPOINT s1')
    await c.query('COMMIT')
    eq('savepoint rollback', (await other.query(`SELECT array_agg(id ORDER BY id) AS ids FROM ${P}_items WHERE id IN (3, 4)`)).rows[0].ids, [3])
  }))
}

async function stepErrors () {
  await withClient(async (c) => {
    await expectError(c.query('SELECT 1/0'), '22012', 'division by zero')
    eq('statement after error', (await c.query('SELECT 41 + 1 AS v')).rows[0].v, 42)
    await c.query(`INSERT INTO ${P}_items VALUES (100, 'x')`)
    await expectError(c.query(`INSERT INTO ${P}_items VALUES ($1, $2)`, [100, 'dup']), '23505', 'unique violation')
    eq('statement after unique violation', (await c.query('SELECT $1::int AS v', [7])).rows[0].v, 7)
    const named = (v) => ({ name: `${P}_div`, text: 'SELECT 100 / $1::int AS v', values: [v] })
    for (let i = 0; i < 6; i++) await c.query(named(5))
    await expectError(c.query(named(0)), '22012', 'named statement division by zero')
    eq('named statement after its error', (await c.query(named(4))).rows[0].v, 25)
    await c.query('BEGIN')
    await expectError(c.query('SELECT 1/0'), '22012', 'division by zero in transaction')
    await expectError(c.query('SELECT 1'), '25P02', 'statement in aborted transaction')
    await c.query('ROLLBACK')
    eq('statement after rollback of failed transaction', (await c.query("SELECT 'ok' AS v")).rows[0].v, 'ok')
  })
}

async function waitActive (probe, marker) {
  const deadline = Date.now() + 10000
  while (Date.now() < deadline) {
    const r = await probe.query(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() AND query LIKE $1",
      [`%${marker}%`])
    if (r.rows[0].n > 0) return
    await sleep(50)
  }
  throw new Error(`the pg_sleep query (${marker}) never showed up as active in pg_stat_activity`)
}

async function stepCancel () {
  const marker = `${P}_cancel_marker`
  return withClient(async (c) => withClient(async (probe) => {
    const q = new pg.Query(`/* pgsidecar: route=primary */ SELECT pg_sleep(10) /* ${marker} */`)
    const done = new Promise((resolve) => {
      q.on('error', (e) => resolve({ err: e, at: Date.now() }))
      q.on('end', () => resolve({ err: null, at: Date.now() }))
    })
    c.query(q)
    await waitActive(probe, marker)
    const began = Date.now()
    new pg.Client(cfg).cancel(c, q) // node-postgres' cancel API: a second client sends the CancelRequest
    const outcome = await Promise.race([done, sleep(15000).then(() => null)])
    if (!outcome) throw new Error('pg_sleep(10) still running 15 s after the cancel')
    if (!outcome.err) throw new Error('pg_sleep(10) was not cancelled')
    expectCode(outcome.err, '57014', 'cancelled statement')
    const took = (outcome.at - began) / 1000
    if (took > 5) throw new Error(`cancel took ${took.toFixed(1)}s (> 5 s)`)
    eq('statement after cancel', (await c.query("SELECT 'alive' AS v")).rows[0].v, 'alive')
    return `cancelled after ${took.toFixed(2)}s`
  }))
}

function copyRows () {
  const rows = []
  for (let i = 1; i <= 1000; i++) {
    rows.push([i, i % 7 === 0 ? null : `name ${i} Grüße 東京 🚀`, `tab\there\nnewline \\ backslash ${i}`])
  }
  return rows
}

const escapeCopy = (v) => v === null ? '\\N' : String(v).replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n').replace(/\r/g, '\\r')
const ESC = { b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v', '\\': '\\' }
const unescapeCopy = (f) => f === '\\N' ? null : f.replace(/\\(.)/g, (_, ch) => ESC[ch] ?? ch)

async function stepCopy () {
  const rows = copyRows()
  await withClient(async (c) => {
    const text = rows.map((r) => r.map(escapeCopy).join('\t') + '\n').join('')
    await pipeline(Readable.from([Buffer.from(text, 'utf8')]), c.query(copyFrom(`COPY ${P}_copy (id, name, note) FROM STDIN`)))
    eq('rows after COPY FROM', (await c.query(`SELECT count(*)::int AS n FROM ${P}_copy`)).rows[0].n, 1000)
    const r = await c.query(`SELECT name, note FROM ${P}_copy WHERE id = 8`)
    eq('a copied row', [r.rows[0].name, r.rows[0].note], [rows[7][1], rows[7][2]])
    const chunks = []
    await pipeline(c.query(copyTo(`COPY (SELECT id, name, note FROM ${P}_copy ORDER BY id) TO STDOUT`)),
      new Writable({ write (chunk, _enc, cb) { chunks.push(chunk); cb() } }))
    const got = Buffer.concat(chunks).toString('utf8').split('\n').filter((l) => l)
      .map((l) => l.split('\t').map(unescapeCopy)).map(([id, name, note]) => [Number(id), name, note])
    eq('COPY TO STDOUT rows', got.length, rows.length)
    for (let i = 0; i < rows.length; i++) eq(`COPY TO STDOUT row ${i}`, got[i], rows[i])
    eq('connection after COPY', (await c.query('SELECT 1 AS v')).rows[0].v, 1)
  })
}

const SETTINGS_SQL = [
  `SET application_name = '${P}_g'`,
  "SET TIME ZONE 'Asia/Tokyo'",
  `SET search_path = public, ${P}_g`,
  "SET statement_timeout = '31s'"
]
const WANT = { application_name: `${P}_g`, TimeZone: 'Asia/Tokyo', search_path: `public, ${P}_g`, statement_timeout: '31s' }

async function stepSettings () {
  let stop = false
  const sideErrors = []
  const show = async (c, name) => Object.values((await c.query(`SHOW ${name}`)).rows[0])[0]
  const noise = async (n) => {
    try {
      await withClient(async (c) => {
        await c.query(`SET application_name = 'noise_${n}'`)
        await c.query("SET TIME ZONE 'America/New_York'")
        await c.query("SET statement_timeout = '32s'")
        while (!stop) {
          await c.query('BEGIN')
          const app = await show(c, 'application_name')
          const tz = await show(c, 'TimeZone')
          await c.query('SELECT pg_sleep(0.005)')
          await c.query('COMMIT')
          if (app !== `noise_${n}` || tz !== 'America/New_York') throw new Error(`noise client ${n} saw application_name='${app}' TimeZone='${tz}'`)
        }
      })
    } catch (e) { sideErrors.push(`noise ${n}: ${e.message}`) }
  }
  const clean = async (n) => {
    try {
      await withClient(async (c) => {
        const defaultTz = (await c.query('SHOW TimeZone')).rows[0].TimeZone // the session's own, at connect
        while (!stop) {
          await c.query('BEGIN')
          const app = await show(c, 'application_name')
          const tz = await show(c, 'TimeZone')
          const st = await show(c, 'statement_timeout')
          await c.query('COMMIT')
          if (app !== `clean_${n}` || tz !== defaultTz || st !== '0') {
            throw new Error(`clean client ${n} saw application_name='${app}' TimeZone='${tz}' statement_timeout='${st}' (expected clean_${n}, ${defaultTz}, 0): another session's settings leaked`)
          }
          await sleep(5)
        }
      }, { application_name: `clean_${n}` })
    } catch (e) { sideErrors.push(`clean ${n}: ${e.message}`) }
  }
  const others = [0, 1, 2, 3].map(noise).concat([0, 1].map(clean))
  const problems = []
  try {
    await withClient(async (c) => {
      const before = [await show(c, 'TimeZone'), await show(c, 'DateStyle')]
      for (const s of SETTINGS_SQL) await c.query(s)
      for (let i = 0; i < 20; i++) {
        const bad = []
        try {
          await c.query('BEGIN')
          for (const [name, want] of Object.entries(WANT)) {
            const got = await show(c, name)
            if (got !== want) bad.push(`SHOW ${name} = '${got}', expected '${want}'`)
          }
          const off = (await c.query('SELECT extract(timezone FROM now())::int AS o')).rows[0].o
          if (off !== 9 * 3600) bad.push(`now() is at UTC offset ${off}s, expected 32400s`)
          const probe = (await c.query('SELECT v FROM probe')).rows[0].v
          if (probe !== P) bad.push(`unqualified table 'probe' gave '${probe}'`)
          await c.query('COMMIT')
        } catch (e) {
          bad.push(`${e.code || ''} ${e.message}`)
          await c.query('ROLLBACK').catch(() => {})
        }
        if (bad.length) problems.push([i + 1, bad])
        await sleep(20)
      }
      await c.query('RESET ALL')
      await c.query('BEGIN')
      const after = [await show(c, 'TimeZone'), await show(c, 'DateStyle')]
      await c.query('COMMIT')
      if (after.join('|') !== before.join('|')) sideErrors.push(`after RESET ALL: TimeZone, DateStyle = ${after.join(', ')}, expected the session's own ${before.join(', ')}`)
    })
  } finally {
    stop = true
    await Promise.all(others)
  }
  const parts = []
  if (problems.length) parts.push(`settings wrong in ${problems.length}/20 transactions; first (transaction ${problems[0][0]}): ${problems[0][1].join('; ')}`)
  parts.push(...sideErrors)
  if (parts.length) throw new Error(parts.join(' | '))
}

async function stepNamedPool () {
  // Named statements reused across many pooled transactions: pg.Pool hands each transaction
  // whichever client is free, each client prepares the statement once, and the proxy moves
  // every transaction to whichever backend is free.
  const pool = new pg.Pool({ ...cfg, max: CONCURRENCY })
  pool.on('error', () => {})
  try {
    const jobs = Array.from({ length: 400 }, async (_, i) => {
      const c = await pool.connect()
      try {
        await c.query('BEGIN')
        await c.query({ name: `${P}_ins`, text: `INSERT INTO ${P}_named (id, worker, v) VALUES ($1, $2, $3)`, values: [i, i % 7, `v${i}`] })
        const r = await c.query({ name: `${P}_get`, text: `SELECT worker, v FROM ${P}_named WHERE id = $1`, values: [i] })
        await c.query('COMMIT')
        eq(`pooled named statement ${i}`, [r.rows[0].worker, r.rows[0].v], [i % 7, `v${i}`])
      } catch (e) {
        await c.query('ROLLBACK').catch(() => {})
        throw e
      } finally {
        c.release()
      }
    })
    await Promise.all(jobs)
    eq('rows inserted by pooled named statements', (await pool.query(`SELECT count(*)::int AS n FROM ${P}_named`)).rows[0].n, 400)
    return '400 pooled transactions with 2 named statements'
  } finally {
    await pool.end()
  }
}

// ---- runner ----------------------------------------------------------------------------------
async function main () {
  const version = require('pg/package.json').version
  console.log(`pg ${version}, pg-copy-streams ${require('pg-copy-streams/package.json').version}`)
  const failed = []
  const steps = [
    ['setup', setup], ['a-types', stepTypes], ['b-prepared-x20', stepPreparedConcurrency],
    ['c-transactions', stepTransactions], ['d-errors', stepErrors], ['e-cancel', stepCancel],
    ['f-copy', stepCopy], ['g-settings', stepSettings], ['x-named-pool', stepNamedPool]
  ]
  for (const [name, fn] of steps) {
    console.log(`step ${name}: START`)
    const began = Date.now()
    try {
      const info = await fn()
      console.log(`step ${name}: PASS (${((Date.now() - began) / 1000).toFixed(1)}s)${info ? ' ' + info : ''}`)
    } catch (e) {
      failed.push(name)
      const msg = (e && e.code ? `${e.code}: ` : '') + String(e && e.message ? e.message : e)
      console.log(`step ${name}: FAIL (${((Date.now() - began) / 1000).toFixed(1)}s) ${msg.replace(/\s+/g, ' ').slice(0, 600)}`)
      console.error(e)
    }
  }
  if (failed.length) {
    console.log(`node-postgres: failed steps: ${failed.join(', ')}`)
    process.exit(1)
  }
  console.log('node-postgres: all steps passed')
  process.exit(0)
}

main().catch((e) => { console.error(e); process.exit(1) })
