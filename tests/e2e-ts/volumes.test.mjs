// Volumes and fork as the TypeScript SDK drives them: volume.get(name, true) creates
// one, sandboxes mount it (VolumeMount passes `readOnly`, Atoll's
// extension, through to the API), and a volume in use cannot be deleted.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { daytona, bestEffort, TEST_TIMEOUT_MS } from './lib/harness.mjs'

test('a volume shared read-write and read-only between sandboxes', { timeout: TEST_TIMEOUT_MS }, async () => {
  const name = `ts-vol-${randomBytes(4).toString('hex')}`
  const volume = await daytona().volume.get(name, true)
  assert.equal(volume.state, 'ready')
  const writer = await daytona().create({ volumes: [{ volumeId: volume.id, mountPath: '/data' }] })
  const reader = await daytona().create({ volumes: [{ volumeId: volume.id, mountPath: '/data', readOnly: true }] })
  try {
    let r = await writer.process.executeCommand('echo shared > /data/f && echo ok')
    assert.equal(r.result.trim(), 'ok')
    r = await reader.process.executeCommand('cat /data/f')
    assert.equal(r.result.trim(), 'shared')
    r = await reader.process.executeCommand('touch /data/g')
    assert.notEqual(r.exitCode, 0)
    assert.match(r.result, /Read-only file system/)
    await assert.rejects(() => daytona().volume.delete(volume), /in use/)
  } finally {
    await bestEffort('delete writer', () => writer.delete())
    await bestEffort('delete reader', () => reader.delete())
  }
  await daytona().volume.delete(volume)
  await assert.rejects(() => daytona().volume.get(name))
})

test('sandbox.fork copies the files of a running sandbox', { timeout: TEST_TIMEOUT_MS }, async () => {
  const parent = await daytona().create()
  let child
  try {
    await parent.process.executeCommand('echo from-parent > /home/daytona/f')
    child = await parent.fork({ name: `ts-fork-${randomBytes(3).toString('hex')}` })
    assert.equal(child.state, 'started')
    let r = await child.process.executeCommand('cat /home/daytona/f')
    assert.equal(r.result.trim(), 'from-parent')
    await child.process.executeCommand('echo from-child > /home/daytona/f')
    r = await parent.process.executeCommand('cat /home/daytona/f')
    assert.equal(r.result.trim(), 'from-parent')
  } finally {
    if (child) await bestEffort('delete child', () => child.delete())
    await bestEffort('delete parent', () => parent.delete())
  }
})
