// codeRun with matplotlib: plt.show() comes back as chart artifacts the
// TypeScript SDK hands out (response.artifacts.charts), and the entrypoint
// session reports the default image's `sleep infinity`.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { ChartType } from '@daytona/sdk'
import { daytona, bestEffort, TEST_TIMEOUT_MS } from './lib/harness.mjs'

const CODE = `
import matplotlib.pyplot as plt
plt.plot([0, 1, 2], [0, 1, 4], label="squares")
plt.title("Line Chart")
plt.show()
plt.bar(["A", "B"], [3, 7])
plt.title("Bar Chart")
plt.show()
plt.scatter([1, 2], [3, 4])
plt.title("Scatter Chart")
plt.show()
plt.pie([1, 3], labels=["x", "y"])
plt.title("Pie Chart")
print("done")
`

test('codeRun returns matplotlib charts; the entrypoint session runs sleep infinity', { timeout: TEST_TIMEOUT_MS }, async () => {
  const sandbox = await daytona().create()
  try {
    const run = await sandbox.process.codeRun(CODE)
    assert.equal(run.exitCode, 0, run.result)
    assert.equal(run.result, 'done\n')
    const charts = run.artifacts?.charts ?? []
    assert.deepEqual(charts.map((c) => [c.type, c.title]), [
      [ChartType.LINE, 'Line Chart'],
      [ChartType.BAR, 'Bar Chart'],
      [ChartType.SCATTER, 'Scatter Chart'],
      [ChartType.PIE, 'Pie Chart'],
    ])
    const [line, bar, scatter, pie] = charts
    assert.deepEqual(line.elements.map((e) => [e.label, e.points]), [['squares', [[0, 0], [1, 1], [2, 4]]]])
    assert.deepEqual(bar.elements.map((e) => [e.label, e.value]), [['A', '3'], ['B', '7']])
    assert.deepEqual(scatter.elements[0].points, [[1, 3], [2, 4]])
    assert.deepEqual(pie.elements.map((e) => [e.label, Math.round(e.angle)]), [['x', 90], ['y', 270]])
    for (const chart of charts) {
      const png = Buffer.from(chart.png, 'base64')
      assert.equal(png.subarray(0, 8).toString('hex'), '89504e470d0a1a0a')
    }

    const session = await sandbox.process.getEntrypointSession()
    assert.equal(session.commands.length, 1)
    assert.equal(session.commands[0].command, 'sleep infinity')
    assert.equal(session.commands[0].exitCode ?? null, null)
    const logs = await sandbox.process.getEntrypointLogs()
    assert.equal(logs.stdout, '')
  } finally {
    await bestEffort('delete sandbox', () => sandbox.delete())
  }
})
