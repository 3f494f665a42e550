// (6) Network settings and previews through the TypeScript SDK: a sandbox
// created with networkBlockAll reports it and still has its loopback;
// updateNetworkSettings switches to an allow list and back, live; an
// http.server bound to the sandbox's localhost is reachable through the
// preview link with its token (401 without), and a signed preview URL works
// until it is expired. (Egress itself is tested with a test-made internet
// in tests/e2e/test_network.py.)

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { withSandbox, sh, waitFor, TEST_TIMEOUT_MS } from './lib/harness.mjs'

async function listening(sandbox, port) {
  const probe = `python3 -c "import socket; socket.create_connection(('127.0.0.1', ${port}), 1)"`
  const r = await sandbox.process.executeCommand(probe)
  return r.exitCode === 0
}

test('network settings and previews', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  await withSandbox(
    async (sandbox) => {
      await t.test('created with networkBlockAll', async () => {
        assert.equal(sandbox.networkBlockAll, true)
      })

      await sh(sandbox, 'mkdir -p /tmp/www && echo hello-ts > /tmp/www/index.html')
      await sandbox.process.createSession('web')
      await sandbox.process.executeSessionCommand('web', {
        command: 'cd /tmp/www && python3 -m http.server 8000 --bind 127.0.0.1',
        runAsync: true,
      })
      await waitFor(() => listening(sandbox, 8000), 'http.server on 127.0.0.1:8000')

      await t.test('updateNetworkSettings: allow list, then everything, live', async () => {
        await sandbox.updateNetworkSettings({ networkAllowList: '198.51.100.0/24, 203.0.113.0/25' })
        assert.equal(sandbox.networkBlockAll, false)
        assert.equal(sandbox.networkAllowList, '198.51.100.0/24,203.0.113.0/25')
        await sandbox.updateNetworkSettings({ networkBlockAll: false })
        assert.equal(sandbox.networkAllowList ?? null, null)
        await assert.rejects(() => sandbox.updateNetworkSettings({ networkAllowList: '10.0.0.0/99' }))
      })

      await t.test('preview link with its token; 401 without', async () => {
        const link = await sandbox.getPreviewLink(8000)
        const ok = await fetch(`${link.url}/index.html`, {
          headers: { 'X-Daytona-Preview-Token': link.token },
        })
        assert.equal(ok.status, 200)
        assert.equal(await ok.text(), 'hello-ts\n')
        const denied = await fetch(`${link.url}/index.html`)
        assert.equal(denied.status, 401)
      })

      await t.test('signed preview URL until it is expired', async () => {
        const signed = await sandbox.getSignedPreviewUrl(8000, 60)
        const url = signed.url.replace('/?', '/index.html?')
        assert.equal((await fetch(url)).status, 200)
        await sandbox.expireSignedPreviewUrl(8000, signed.token)
        assert.equal((await fetch(url)).status, 403)
      })
    },
    { networkBlockAll: true },
  )
})
