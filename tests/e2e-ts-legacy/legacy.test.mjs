// What users of older `@daytonaio/sdk` releases (pinned by LangChain, Mastra and
// other integrations) do, against an Atoll server: create with name, labels and
// env, get, list (0.143 pages through `GET /api/sandbox/paginated`, 0.192 walks
// the cursor list), executeCommand and codeRun, files, sessions, stop/start,
// delete.
//
// Which release: ATOLL_LEGACY_SDK names one of package.json's aliases
// (`sdk-0.143`, `sdk-0.192`); tests/e2e/test_sdk_legacy.py runs this file once
// per alias with DAYTONA_API_URL / DAYTONA_API_KEY set for its server.

import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'

const alias = process.env.ATOLL_LEGACY_SDK
const apiUrl = process.env.DAYTONA_API_URL
const apiKey = process.env.DAYTONA_API_KEY
if (!alias || !apiUrl || !apiKey) {
  throw new Error('set ATOLL_LEGACY_SDK, DAYTONA_API_URL and DAYTONA_API_KEY (tests/e2e/test_sdk_legacy.py does)')
}
// 0.143 is CommonJS: its exports may come as the default export of the ESM wrapper.
const loaded = await import(alias)
const sdk = loaded.Daytona ? loaded : loaded.default
const { Daytona, DaytonaNotFoundError } = sdk
const { version } = (await import(`${alias}/package.json`, { with: { type: 'json' } })).default
const daytona = new Daytona({ apiUrl, apiKey })
// 0.143's `list(labels, page, limit)` is one page of the paginated route;
// later releases return an async iterator over the cursor route.
const PAGINATED = typeof daytona.findOne === 'function'

const TEST_TIMEOUT_MS = 180_000
const tag = `legacy-${version}-${process.pid}-${Date.now().toString(36)}`
const created = []

async function create(params) {
  const sandbox = await daytona.create(params)
  created.push(sandbox)
  return sandbox
}

after(async () => {
  for (const sandbox of created) {
    try {
      await sandbox.delete()
    } catch {
      // deleted by the test already, or gone with the server
    }
  }
})

async function listByLabels(labels) {
  if (PAGINATED) {
    const page = await daytona.list(labels, 1, 50)
    assert.equal(page.page, 1)
    assert.equal(page.total, page.items.length)
    return page.items
  }
  const items = []
  for await (const sandbox of daytona.list({ labels, limit: 2 })) items.push(sandbox)
  return items
}

async function sh(sandbox, command) {
  const res = await sandbox.process.executeCommand(command)
  assert.equal(res.exitCode, 0, `${command}: ${res.result}`)
  return res.result
}

test(`${alias}: create with name, labels and env; get, list, delete`, { timeout: TEST_TIMEOUT_MS }, async () => {
  const name = `${tag}-a`
  const sandbox = await create({ name, labels: { suite: tag, role: 'a' }, envVars: { GREETING: 'hello legacy', EMPTY: '' } })
  assert.equal(sandbox.state, 'started')
  assert.equal(sandbox.name, name)
  assert.equal(sandbox.labels.suite, tag)
  assert.equal(sandbox.labels.role, 'a')
  assert.equal(sandbox.env.GREETING, 'hello legacy')
  assert.equal((await sh(sandbox, 'echo "$GREETING|${EMPTY-unset}"')).trim(), 'hello legacy|')

  const other = await create({ labels: { suite: tag, role: 'b' } })

  for (const key of [sandbox.id, name]) {
    const got = await daytona.get(key)
    assert.equal(got.id, sandbox.id)
    assert.equal(got.name, name)
    assert.equal(got.state, 'started')
    assert.deepEqual({ ...got.labels }, { ...sandbox.labels })
  }

  const both = await listByLabels({ suite: tag })
  assert.deepEqual(both.map((s) => s.id).sort(), [sandbox.id, other.id].sort())
  const onlyB = await listByLabels({ suite: tag, role: 'b' })
  assert.deepEqual(onlyB.map((s) => s.id), [other.id])
  // A listed sandbox is a working handle, as integrations use it.
  assert.equal((await sh(onlyB[0], 'echo listed')).trim(), 'listed')
  assert.deepEqual(await listByLabels({ suite: `${tag}-none` }), [])

  if (PAGINATED) {
    const found = await daytona.findOne({ labels: { suite: tag, role: 'a' } })
    assert.equal(found.id, sandbox.id)
    const page2 = await daytona.list({ suite: tag }, 2, 1)
    assert.equal(page2.total, 2)
    assert.equal(page2.totalPages, 2)
    assert.equal(page2.items.length, 1)
  }

  const labels = await sandbox.setLabels({ suite: tag, role: 'c' })
  assert.equal(labels.role, 'c')
  assert.deepEqual((await listByLabels({ suite: tag, role: 'c' })).map((s) => s.id), [sandbox.id])

  await daytona.delete(other)
  await assert.rejects(daytona.get(other.id), (err) => {
    assert.ok(err instanceof DaytonaNotFoundError, `expected DaytonaNotFoundError, got ${err?.constructor?.name}: ${err?.message}`)
    return true
  })
  assert.deepEqual((await listByLabels({ suite: tag })).map((s) => s.id), [sandbox.id])
})

test(`${alias}: executeCommand and codeRun`, { timeout: TEST_TIMEOUT_MS }, async () => {
  const sandbox = await create({ labels: { suite: tag } })
  const echo = await sandbox.process.executeCommand('echo hi')
  assert.equal(echo.exitCode, 0)
  assert.equal(echo.result.trim(), 'hi')
  // 0.143 sends env as `export X=$(echo <b64> | base64 -d)` inside `sh -c "..."`;
  // the shell that runs every command (as Daytona's daemon does today) expands
  // that before `sh` sees it, so a value with blanks or `$` is re-parsed. Plain
  // values reach the command intact; later releases send `envs` and keep any value.
  const value = PAGINATED ? 'from-env' : 'from env $HOME'
  const where = await sandbox.process.executeCommand('pwd; echo "$X"', '/tmp', { X: value })
  assert.equal(where.exitCode, 0)
  assert.deepEqual(where.result.trim().split('\n'), ['/tmp', value])
  const failing = await sandbox.process.executeCommand('echo out; exit 7')
  assert.equal(failing.exitCode, 7)
  assert.equal(failing.result.trim(), 'out')

  const run = await sandbox.process.codeRun('import sys\nprint(6*7, sys.version_info[0])')
  assert.equal(run.exitCode, 0, run.result)
  assert.equal(run.result.trim(), '42 3')
  const boom = await sandbox.process.codeRun('raise ValueError("nope")')
  assert.notEqual(boom.exitCode, 0)
  assert.match(boom.result, /ValueError: nope/)
  assert.equal(await sandbox.getUserHomeDir(), '/home/daytona')
})

test(`${alias}: files: upload, download, list, bulk upload, details, delete`, { timeout: TEST_TIMEOUT_MS }, async () => {
  const sandbox = await create({ labels: { suite: tag } })
  const dir = '/home/daytona/legacy'
  await sandbox.fs.createFolder(dir, '755')
  const body = Buffer.from(`hello from ${alias}\n`)
  await sandbox.fs.uploadFile(body, `${dir}/one.txt`)
  assert.equal((await sandbox.fs.downloadFile(`${dir}/one.txt`)).toString(), body.toString())

  const binary = Buffer.alloc(300_000)
  for (let i = 0; i < binary.length; i++) binary[i] = (i * 31 + 7) & 0xff
  await sandbox.fs.uploadFiles([
    { source: Buffer.from('two\n'), destination: `${dir}/two.txt` },
    { source: binary, destination: `${dir}/sub/bin.dat` },
  ])
  assert.ok((await sandbox.fs.downloadFile(`${dir}/sub/bin.dat`)).equals(binary))
  assert.equal((await sh(sandbox, `cat ${dir}/two.txt`)), 'two\n')

  const listed = await sandbox.fs.listFiles(dir)
  assert.deepEqual(listed.map((f) => f.name).sort(), ['one.txt', 'sub', 'two.txt'])
  assert.equal(listed.find((f) => f.name === 'sub').isDir, true)
  const info = await sandbox.fs.getFileDetails(`${dir}/sub/bin.dat`)
  assert.equal(info.size, binary.length)
  assert.equal(info.isDir, false)

  await sandbox.fs.deleteFile(`${dir}/one.txt`)
  await assert.rejects(sandbox.fs.downloadFile(`${dir}/one.txt`))
  assert.deepEqual((await sandbox.fs.listFiles(dir)).map((f) => f.name).sort(), ['sub', 'two.txt'])

  // What integrations do all the time, and what once lost uploads to a 502
  // ("error writing a body to connection": 0.143's streamed multipart body
  // met a pooled daemon connection that had just closed): uploads right after
  // a download or a command on the same sandbox, in concurrent bursts (5 of 100).
  const sent = new Map()
  for (let burst = 0; burst < 5; burst++) {
    const failures = []
    await Promise.all(
      Array.from({ length: 20 }, async (_, worker) => {
        for (let round = 0; round < 5; round++) {
          const path = `${dir}/burst/${burst}-${worker}-${round}.txt`
          const payload = Buffer.from(`${path}\n`.repeat(1 + ((worker * 7 + round * 13) % 400)))
          try {
            if ((worker + round) % 2) await sandbox.fs.downloadFile(`${dir}/two.txt`)
            else await sandbox.process.executeCommand('true')
            await sandbox.fs.uploadFile(payload, path)
            sent.set(path, payload)
          } catch (err) {
            failures.push(`${path}: ${err?.message ?? err}`)
          }
        }
      }),
    )
    assert.deepEqual(failures, [], `burst ${burst}: ${failures.length} of 100 uploads failed`)
  }
  const sums = await sh(sandbox, `cd ${dir}/burst && sha256sum *.txt`)
  const got = new Map(sums.trim().split('\n').map((line) => line.split(/\s+/).reverse()))
  assert.equal(got.size, sent.size)
  for (const [path, payload] of sent) {
    const want = createHash('sha256').update(payload).digest('hex')
    assert.equal(got.get(path.split('/').pop()), want, path)
  }
  const sample = `${dir}/burst/4-19-4.txt`
  assert.ok((await sandbox.fs.downloadFile(sample)).equals(sent.get(sample)))
})

test(`${alias}: sessions`, { timeout: TEST_TIMEOUT_MS }, async () => {
  const sandbox = await create({ labels: { suite: tag } })
  const id = `s-${process.pid}`
  await sandbox.process.createSession(id)
  const cd = await sandbox.process.executeSessionCommand(id, { command: 'cd /tmp && export SESSION_VAR=kept' })
  assert.equal(cd.exitCode, 0)
  const pwd = await sandbox.process.executeSessionCommand(id, { command: 'echo "$(pwd) $SESSION_VAR"; echo err >&2' })
  assert.equal(pwd.exitCode, 0)
  assert.equal(pwd.stdout.trim(), '/tmp kept')
  assert.equal(pwd.stderr.trim(), 'err')
  const failed = await sandbox.process.executeSessionCommand(id, { command: "sh -c 'exit 3'" })
  assert.equal(failed.exitCode, 3)

  const started = await sandbox.process.executeSessionCommand(id, { command: 'sleep 0.3; echo done-async', runAsync: true })
  assert.ok(started.cmdId)
  let command
  const deadline = Date.now() + 20_000
  do {
    await new Promise((r) => setTimeout(r, 100))
    command = await sandbox.process.getSessionCommand(id, started.cmdId)
  } while (command.exitCode == null && Date.now() < deadline)
  assert.equal(command.exitCode, 0)
  const logs = await sandbox.process.getSessionCommandLogs(id, started.cmdId)
  assert.equal(logs.stdout.trim(), 'done-async')
  const streamed = []
  await sandbox.process.getSessionCommandLogs(id, started.cmdId, (c) => streamed.push(c), () => {})
  assert.equal(streamed.join('').trim(), 'done-async')

  const session = await sandbox.process.getSession(id)
  assert.equal(session.sessionId, id)
  assert.ok(session.commands.length >= 4)
  assert.ok((await sandbox.process.listSessions()).some((s) => s.sessionId === id))
  await sandbox.process.deleteSession(id)
  assert.ok(!(await sandbox.process.listSessions()).some((s) => s.sessionId === id))
})

test(`${alias}: stop and start keep files and env; delete`, { timeout: TEST_TIMEOUT_MS }, async () => {
  const sandbox = await create({ labels: { suite: tag }, envVars: { KEEP: 'k' } })
  await sandbox.fs.uploadFile(Buffer.from('survives\n'), '/home/daytona/keep.txt')
  await sandbox.stop()
  assert.equal(sandbox.state, 'stopped')
  assert.equal((await daytona.get(sandbox.id)).state, 'stopped')
  await daytona.start(sandbox)
  assert.equal(sandbox.state, 'started')
  assert.equal((await sandbox.fs.downloadFile('/home/daytona/keep.txt')).toString(), 'survives\n')
  assert.equal((await sh(sandbox, 'echo $KEEP')).trim(), 'k')
  await sandbox.delete()
  await assert.rejects(daytona.get(sandbox.id), (err) => err instanceof DaytonaNotFoundError)
})
