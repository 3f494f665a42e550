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

// Local files: the SDK uploads each as a tar through push-access to the
// server's S3-compatible endpoint (HTTPS with the server's local CA, which
// the harness trusts through NODE_EXTRA_CA_CERTS), and the builder copies
// them into the image.
test('Image.addLocalFile/addLocalDir upload a build context and COPY it', { timeout: TEST_TIMEOUT_MS }, async () => {
  const { mkdtempSync, mkdirSync, writeFileSync, rmSync } = await import('node:fs')
  const { join } = await import('node:path')
  const { tmpdir } = await import('node:os')
  const { Image } = await import('@daytona/sdk')
  const dir = mkdtempSync(join(tmpdir(), 'atoll-ts-ctx-'))
  try {
    const token = randomBytes(6).toString('hex')
    writeFileSync(join(dir, 'one.txt'), `one-${token}\n`)
    mkdirSync(join(dir, 'tree', 'sub'), { recursive: true })
    writeFileSync(join(dir, 'tree', 'sub', 'two.txt'), 'two\n')
    // Larger than one 5 MiB part: a multipart upload.
    writeFileSync(join(dir, 'tree', 'big.bin'), Buffer.alloc(6 << 20, 7))
    const image = Image.base(IMAGE)
      .addLocalFile(join(dir, 'one.txt'), '/app/one.txt')
      .addLocalDir(join(dir, 'tree'), '/app/tree')
      .runCommands('cat /app/one.txt /app/tree/sub/two.txt > /app/both')
    const name = unique('ts-ctx')
    const snap = await daytona().snapshot.create({ name, image }, { onLogs: () => {} })
    assert.equal(snap.state, 'active')
    const sandbox = await daytona().create({ snapshot: name })
    try {
      const r = await sandbox.process.executeCommand('cat /app/both; wc -c < /app/tree/big.bin')
      assert.deepEqual(r.result.trim().split('\n').map((l) => l.trim()), [`one-${token}`, 'two', String(6 << 20)])
    } finally {
      await bestEffort('delete sandbox', () => sandbox.delete())
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
