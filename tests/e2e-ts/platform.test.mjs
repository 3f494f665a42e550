// (8) Platform services through the TypeScript SDK: signed file URLs (work
// without a key; rotation and tampering give 403), SecretService and
// secrets mounted as env, TTL, list filters, and a warm pool a create takes
// a sandbox from.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { daytona, withSandbox, sh, waitFor, TEST_TIMEOUT_MS } from './lib/harness.mjs'

const suffix = Math.random().toString(16).slice(2, 8)

test('signed file URLs', { timeout: TEST_TIMEOUT_MS }, async () => {
  await withSandbox(async (sandbox) => {
    await sandbox.fs.uploadFile(Buffer.from('ts report'), '/home/daytona/r.txt')
    const url = await sandbox.downloadUrl('/home/daytona/r.txt', 600)
    let res = await fetch(url)
    assert.equal(res.status, 200)
    assert.equal(await res.text(), 'ts report')

    const up = await sandbox.uploadUrl('/home/daytona/up.bin')
    const form = new FormData()
    form.append('file', new Blob([Buffer.from('uploaded from ts')]), 'up.bin')
    res = await fetch(up, { method: 'POST', body: form })
    assert.ok(res.status === 200 || res.status === 201, `upload status ${res.status}`)
    assert.equal((await sandbox.fs.downloadFile('/home/daytona/up.bin')).toString(), 'uploaded from ts')

    const tampered = new URL(url)
    tampered.searchParams.set('path', '/etc/shadow')
    assert.equal((await fetch(tampered)).status, 403)

    await sandbox.rotateSigningKey()
    assert.equal((await fetch(url)).status, 403)
    assert.equal((await fetch(await sandbox.downloadUrl('/home/daytona/r.txt'))).status, 200)
  })
})

test('secrets mounted as environment variables', { timeout: TEST_TIMEOUT_MS }, async () => {
  const d = daytona()
  const secret = await d.secret.create({ name: `ts-token-${suffix}`, value: 'ts-secret-value' })
  assert.equal(secret.name, `ts-token-${suffix}`)
  assert.ok(!JSON.stringify(secret).includes('ts-secret-value'))
  const page = await d.secret.list({ name: `ts-token-${suffix}` })
  assert.deepEqual(page.items.map((s) => s.id), [secret.id])
  try {
    await withSandbox(
      async (sandbox) => {
        assert.equal((await sh(sandbox, 'echo "$TOKEN"')).trim(), 'ts-secret-value')
        await sandbox.updateSecrets({ OTHER: `ts-token-${suffix}` })
        assert.equal((await sh(sandbox, 'echo "${TOKEN-none}|$OTHER"')).trim(), 'none|ts-secret-value')
        await sandbox.updateSecrets({})
      },
      { secrets: { TOKEN: `ts-token-${suffix}` } },
    )
  } finally {
    await d.secret.delete(secret.id)
  }
  await assert.rejects(() => d.secret.get(secret.id))
})

test('TTL and list filters', { timeout: TEST_TIMEOUT_MS }, async () => {
  const d = daytona()
  const labels = { suite: `ts-filters-${suffix}` }
  await withSandbox(
    async (sandbox) => {
      assert.ok(sandbox.autoDestroyAt, 'autoDestroyAt is set by ttlMinutes')
      await sandbox.setTtl(0)
      await sandbox.refreshData()
      assert.equal(sandbox.autoDestroyAt ?? null, null)
      await sandbox.setTtl(90)
      await sandbox.refreshData()
      const collect = async (q) => {
        const out = []
        for await (const s of d.list({ labels, ...q })) out.push(s.id)
        return out
      }
      const hour = 3600_000
      assert.deepEqual(await collect({}), [sandbox.id])
      assert.deepEqual(await collect({ isPublic: true }), [sandbox.id])
      assert.deepEqual(await collect({ isPublic: false }), [])
      assert.deepEqual(await collect({ createdAtAfter: new Date(Date.now() - hour) }), [sandbox.id])
      assert.deepEqual(await collect({ createdAtBefore: new Date(Date.now() - hour) }), [])
      assert.deepEqual(await collect({ autoDestroyAtBefore: new Date(Date.now() + 2 * hour) }), [sandbox.id])
      assert.deepEqual(await collect({ autoDestroyAtBefore: new Date(Date.now() + hour) }), [])
      assert.deepEqual(await collect({ minCpu: 2 }), [])
      assert.deepEqual(await collect({ states: ['started'], sort: 'name', order: 'asc' }), [sandbox.id])
    },
    { labels, public: true, ttlMinutes: 30 },
  )
})

test('a warm pool serves a matching create', { timeout: TEST_TIMEOUT_MS }, async () => {
  const d = daytona()
  const snapshot = (await d.snapshot.list()).items.find((s) => s.general).name
  const pool = await d.warmPool.create({ snapshot, pool: 1 })
  try {
    await waitFor(
      async () => (await d.warmPool.list()).find((p) => p.id === pool.id)?.currentSize === 1,
      'the warm pool to fill',
      60_000,
      200,
    )
    const started = Date.now()
    await withSandbox(
      async (sandbox) => {
        assert.equal(sandbox.name, `ts-warm-${suffix}`)
        assert.equal((await sh(sandbox, 'echo "$FROM_POOL"')).trim(), 'yes')
        const listed = []
        for await (const s of d.list({ labels: { pool: suffix } })) listed.push(s.id)
        assert.deepEqual(listed, [sandbox.id])
      },
      { name: `ts-warm-${suffix}`, labels: { pool: suffix }, envVars: { FROM_POOL: 'yes' } },
    )
    assert.ok(Date.now() - started < 60_000)
    await waitFor(
      async () => (await d.warmPool.list()).find((p) => p.id === pool.id)?.currentSize === 1,
      'the warm pool to refill',
      60_000,
      200,
    )
  } finally {
    await d.warmPool.delete(pool.id)
  }
})
