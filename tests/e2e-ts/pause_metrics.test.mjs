// Pause/resume and metrics through the TypeScript SDK: pause freezes the
// sandbox's processes and start resumes the same ones; getMetricsLatest is
// the sandbox's own (its 1 GiB memory limit, its 3 GiB disk); getMetrics
// returns the server's samples of it.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { SandboxState } from '@daytona/sdk'
import { withSandbox, sh, waitFor, TEST_TIMEOUT_MS } from './lib/harness.mjs'

const GIB = 1024 ** 3

async function counter(sandbox) {
  const [pid, n] = (await sh(sandbox, 'cat /tmp/counter')).trim().split(' ')
  return { pid, n: Number(n) }
}

test('pause freezes, start resumes the same processes', { timeout: TEST_TIMEOUT_MS }, async () => {
  await withSandbox(async (sandbox) => {
    await sh(
      sandbox,
      `(setsid nohup sh -c 'n=0; while :; do n=$((n+1)); echo "$$ $n" > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.05; done' >/dev/null 2>&1 &)`,
    )
    await waitFor(async () => (await sandbox.process.executeCommand('test -s /tmp/counter')).exitCode === 0, 'the counter')
    const before = await counter(sandbox)

    await sandbox.pause()
    assert.equal(sandbox.state, SandboxState.PAUSED)
    // metrics are answered while paused
    const paused = await sandbox.getMetricsLatest()
    assert.equal(paused.memTotal, GIB)
    await new Promise((r) => setTimeout(r, 1000))

    await sandbox.start()
    assert.equal(sandbox.state, SandboxState.STARTED)
    await waitFor(async () => (await counter(sandbox)).n > before.n, 'the counter to move again')
    const after = await counter(sandbox)
    assert.equal(after.pid, before.pid, 'the process was restarted, not resumed')
  }, { autoStopInterval: 0 })
})

test('metrics are the sandbox\'s own, latest and history', { timeout: TEST_TIMEOUT_MS }, async () => {
  await withSandbox(async (sandbox) => {
    const m = await sandbox.getMetricsLatest()
    assert.equal(m.cpuCount, 1)
    assert.equal(m.memTotal, GIB)
    assert.ok(m.memUsed > 0 && m.memUsed < GIB, `memUsed ${m.memUsed}`)
    assert.ok(m.diskTotal > 2.7 * GIB && m.diskTotal <= 3 * GIB, `diskTotal ${m.diskTotal}`)

    let samples = []
    // the session's server samples every 15 s
    await waitFor(async () => {
      samples = await sandbox.getMetrics()
      return samples.length >= 1
    }, 'a metrics sample', 60_000, 1000)
    for (const s of samples) {
      assert.equal(s.memTotal, GIB)
      assert.equal(s.cpuCount, 1)
      assert.ok(s.timestamp instanceof Date && !Number.isNaN(s.timestamp.getTime()))
    }
  }, { autoStopInterval: 0 })
})
