// `sandbox.updateEnv` (toolbox `POST /env`) and the toolbox's port routes
// (`GET /port`, `GET /port/{port}/in-use`) through the TypeScript SDK. The SDK
// has no Sandbox method for ports; its toolbox client's `PortApi`
// (`getPorts`, `isPortInUse`) is what a TypeScript user calls, built the way the
// SDK builds its own toolbox clients (base path = toolbox proxy URL + sandbox id).

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Configuration, PortApi } from '@daytona/toolbox-api-client'
import { config, daytona, sh, waitFor, withSandbox, TEST_TIMEOUT_MS } from './lib/harness.mjs'

function portApi(sandbox) {
  const base = sandbox.toolboxProxyUrl.replace(/\/$/, '')
  return new PortApi(
    new Configuration({
      basePath: `${base}/${sandbox.id}`,
      baseOptions: { headers: { Authorization: `Bearer ${config().apiKey}` } },
    }),
  )
}

test('updateEnv: new commands and sessions see it, running ones keep theirs, bad names refused, kept across stop/start', { timeout: TEST_TIMEOUT_MS }, async () => {
  await withSandbox(
    async (sandbox) => {
      // A session started before the change keeps its environment.
      await sandbox.process.createSession('before')
      await sandbox.updateEnv({ NEW_VAR: 'hello world', QUOTED: `it's "q" $HOME` }, { unset: ['OLD'] })
      assert.equal((await sh(sandbox, 'echo "$KEEP|$NEW_VAR|${OLD-unset}"')).trim(), 'k|hello world|unset')
      assert.equal((await sh(sandbox, 'printf %s "$QUOTED"')), `it's "q" $HOME`)

      await sandbox.process.createSession('after')
      const after = await sandbox.process.executeSessionCommand('after', { command: 'echo "$NEW_VAR|${OLD-unset}"' })
      assert.equal(after.stdout.trim(), 'hello world|unset')
      const before = await sandbox.process.executeSessionCommand('before', { command: 'echo "${NEW_VAR-unset}|$OLD"' })
      assert.equal(before.stdout.trim(), 'unset|o')

      // Code run and a later change that only unsets.
      const run = await sandbox.process.codeRun('import os; print(os.environ.get("NEW_VAR"))')
      assert.equal(run.result.trim(), 'hello world')
      await sandbox.updateEnv({}, { unset: ['QUOTED'] })
      assert.equal((await sh(sandbox, 'echo "${QUOTED-unset}|$NEW_VAR"')).trim(), 'unset|hello world')

      // Names the kernel cannot carry (`=` or NUL inside, or empty) and NUL in values.
      for (const bad of [{ 'BAD=NAME': 'x' }, { '': 'x' }, { 'NUL\0': 'x' }, { OK_NAME: 'nul\0value' }]) {
        await assert.rejects(sandbox.updateEnv(bad), (err) => {
          assert.equal(err.statusCode, 400, `${JSON.stringify(bad)}: ${err.message}`)
          return true
        })
      }
      await assert.rejects(sandbox.updateEnv({}, { unset: ['A=B'] }), (err) => err.statusCode === 400)
      // A refused change changed nothing.
      assert.equal((await sh(sandbox, 'echo "$NEW_VAR|${OK_NAME-unset}"')).trim(), 'hello world|unset')

      await daytona().stop(sandbox)
      await daytona().start(sandbox)
      assert.equal((await sh(sandbox, 'echo "$KEEP|$NEW_VAR|${OLD-unset}|${QUOTED-unset}"')).trim(), 'k|hello world|unset|unset')
    },
    { envVars: { KEEP: 'k', OLD: 'o' } },
  )
})

test('ports: getPorts lists what listens inside, isPortInUse answers per port, a bad port is refused', { timeout: TEST_TIMEOUT_MS }, async () => {
  await withSandbox(async (sandbox) => {
    const api = portApi(sandbox)
    const initial = (await api.getPorts()).data.ports
    assert.ok(Array.isArray(initial), JSON.stringify(initial))
    assert.ok(!initial.includes(8123), JSON.stringify(initial))
    assert.deepEqual((await api.isPortInUse(8123)).data, { isInUse: false })

    await sandbox.process.createSession('http')
    await sandbox.process.executeSessionCommand('http', {
      command: 'python3 -m http.server 8123 --bind 127.0.0.1 > /tmp/http.log 2>&1',
      runAsync: true,
    })
    await waitFor(async () => (await api.getPorts()).data.ports.includes(8123), 'port 8123 in getPorts', 20_000, 100)
    assert.deepEqual((await api.isPortInUse(8123)).data, { isInUse: true })
    assert.deepEqual((await api.isPortInUse(8124)).data, { isInUse: false })

    await assert.rejects(api.isPortInUse(99999), (err) => {
      assert.equal(err.response?.status, 400, err.message)
      return true
    })

    await sandbox.process.deleteSession('http')
    await waitFor(async () => !(await api.getPorts()).data.ports.includes(8123), 'port 8123 to close', 20_000, 100)
    assert.deepEqual((await api.isPortInUse(8123)).data, { isInUse: false })
  })
})
