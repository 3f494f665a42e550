// Snapshots from a registry image, as the TypeScript SDK drives them:
// snapshot.create with onLogs, a sandbox from the snapshot, a sandbox from an
// image reference (buildInfo of one FROM line), createSnapshot of a running
// sandbox. ATOLL_TEST_IMAGE names an image the harness pushed to a registry
// on loopback (tests/e2e/test_sdk_typescript.py): busybox plus /marker.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { daytona, bestEffort, TEST_TIMEOUT_MS } from './lib/harness.mjs'

const IMAGE = process.env.ATOLL_TEST_IMAGE
const unique = (p) => `${p}-${randomBytes(4).toString('hex')}`

test('snapshot.create pulls a registry image; sandboxes start from it', { timeout: TEST_TIMEOUT_MS }, async () => {
  assert.ok(IMAGE, 'ATOLL_TEST_IMAGE is set by the harness')
  const name = unique('ts-snap')
  const logs = []
  const snap = await daytona().snapshot.create({ name, image: IMAGE }, { onLogs: (l) => logs.push(l) })
  assert.equal(snap.state, 'active')
  assert.ok(logs.some((l) => l.includes('Creating snapshot')), logs.join('\n'))
  const sandbox = await daytona().create({ snapshot: name })
  try {
    const r = await sandbox.process.executeCommand('cat /marker')
    assert.equal(r.result.trim(), 'pushed-by-the-harness')
  } finally {
    await bestEffort('delete sandbox', () => sandbox.delete())
  }
  const got = await daytona().snapshot.get(name)
  await daytona().snapshot.delete(got)
  await assert.rejects(() => daytona().snapshot.get(name))
})

test('create({ image }) makes the snapshot, then the sandbox', { timeout: TEST_TIMEOUT_MS }, async () => {
  const sandbox = await daytona().create({ image: IMAGE }, { timeout: 120 })
  try {
    const r = await sandbox.process.executeCommand('cat /marker')
    assert.equal(r.result.trim(), 'pushed-by-the-harness')
  } finally {
    await bestEffort('delete sandbox', () => sandbox.delete())
  }
})

test('createSnapshot captures a running sandbox', { timeout: TEST_TIMEOUT_MS }, async () => {
  const name = unique('ts-capture')
  const sandbox = await daytona().create()
  try {
    await sandbox.fs.uploadFile(Buffer.from('kept\n'), '/home/daytona/kept.txt')
    await sandbox.createSnapshot(name)
    await sandbox.refreshData()
    assert.equal(sandbox.state, 'started')
  } finally {
    await bestEffort('delete sandbox', () => sandbox.delete())
  }
  const child = await daytona().create({ snapshot: name })
  try {
    const r = await child.process.executeCommand('cat /home/daytona/kept.txt')
    assert.equal(r.result.trim(), 'kept')
  } finally {
    await bestEffort('delete child', () => child.delete())
  }
})
