"""The default image matches what code written for Daytona's default snapshot
expects: `python` is Python 3, the data packages import and work, a
matplotlib `plt.show()` in code_run comes back as chart artifacts the SDK
parses, and the image's entrypoint (`sleep infinity`) runs as the entrypoint
session."""

import base64
import struct
import textwrap

import pytest
from daytona import BarChart, ChartType, LineChart, PieChart, ScatterChart


def run(sandbox, code):
    response = sandbox.process.code_run(textwrap.dedent(code))
    assert response.exit_code == 0, response.result
    return response


def png_size(b64):
    """(width, height) of a base64 PNG, checking it is one."""
    data = base64.b64decode(b64, validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert data[-8:-4] == b"IEND"
    return width, height


# -- python and its packages -------------------------------------------------------


def test_python_is_python3_and_reads_code_from_stdin(sandbox):
    response = sandbox.process.exec(
        "python - <<'PY'\nimport sys\nprint(sys.version_info[0], sys.argv)\nPY"
    )
    assert response.exit_code == 0, response.result
    assert response.result.strip() == "3 ['-']"
    for program in ("python", "python3"):
        response = sandbox.process.exec(f"{program} --version")
        assert response.exit_code == 0
        assert response.result.startswith("Python 3."), response.result


PACKAGE_CHECKS = {
    "numpy": """
        import numpy as np
        a = np.arange(12).reshape(3, 4)
        print(int(a.sum()), a.T.shape, round(float(np.linalg.det(np.eye(3) * 2)), 6))
    """,
    "pandas": """
        import pandas as pd
        df = pd.DataFrame({"k": ["a", "b", "a"], "v": [1, 2, 3]})
        print(df.groupby("k")["v"].sum().to_dict())
    """,
    "scipy": """
        from scipy import optimize, stats
        print(round(optimize.minimize_scalar(lambda x: (x - 2) ** 2).x, 4), stats.norm.cdf(0))
    """,
    "requests": """
        import requests
        print(requests.Request("GET", "http://example.com/s", params={"q": "a b"}).prepare().url)
    """,
    "pillow": """
        from PIL import Image
        im = Image.new("RGB", (4, 3), (10, 20, 30))
        print(im.size, im.getpixel((1, 1)))
    """,
    "matplotlib": """
        import io
        import matplotlib
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3])
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        print(matplotlib.get_backend(), buf.getvalue()[:4])
        plt.close(fig)
    """,
}

EXPECTED = {
    "numpy": "66 (4, 3) 8.0",
    "pandas": "{'a': 4, 'b': 2}",
    "scipy": "2.0 0.5",
    "requests": "http://example.com/s?q=a+b",
    "pillow": "(4, 3) (10, 20, 30)",
    "matplotlib": "agg b'\\x89PNG'",
}


@pytest.mark.parametrize("package", sorted(PACKAGE_CHECKS))
def test_data_packages_import_and_compute(sandbox, package):
    response = run(sandbox, PACKAGE_CHECKS[package])
    assert response.result.strip() == EXPECTED[package]


# -- charts --------------------------------------------------------------------------

CHARTS_CODE = """
import matplotlib.pyplot as plt

print("before")
plt.figure()
plt.plot([0, 1, 2, 3], [0, 1, 4, 9], label="squares")
plt.title("Line Chart")
plt.xlabel("x")
plt.ylabel("x squared")
plt.show()

plt.figure()
plt.bar(["A", "B", "C"], [3, 7, 5], label="2024")
plt.title("Bar Chart")
plt.show()

plt.figure()
plt.scatter([1, 2, 3], [4, 5, 6], label="points")
plt.title("Scatter Chart")
plt.show()

# Left open: charted when the code ends.
plt.figure()
plt.pie([1, 1, 2], labels=["x", "y", "z"])
plt.title("Pie Chart")
print("after")
"""


def test_code_run_returns_line_bar_scatter_and_pie_charts(sandbox):
    response = run(sandbox, CHARTS_CODE)
    assert response.result == "before\nafter\n"
    charts = response.artifacts.charts
    assert [c.type for c in charts] == ["line", "bar", "scatter", "pie"]
    assert [c.title for c in charts] == ["Line Chart", "Bar Chart", "Scatter Chart", "Pie Chart"]
    line, bar, scatter, pie = charts

    assert isinstance(line, LineChart) and line.type == ChartType.LINE
    assert (line.x_label, line.y_label) == ("x", "x squared")
    assert line.x_scale == "linear" and line.x_ticks and line.x_tick_labels
    assert [(e.label, e.points) for e in line.elements] == [
        ("squares", [[0, 0], [1, 1], [2, 4], [3, 9]])
    ]

    assert isinstance(bar, BarChart)
    assert [(e.label, e.value, e.group) for e in bar.elements] == [
        ("A", "3", "2024"),
        ("B", "7", "2024"),
        ("C", "5", "2024"),
    ]
    assert bar.x_scale == "categorical"

    assert isinstance(scatter, ScatterChart)
    assert [(e.label, e.points) for e in scatter.elements] == [
        ("points", [[1, 4], [2, 5], [3, 6]])
    ]

    assert isinstance(pie, PieChart)
    assert [(e.label, round(e.angle), e.radius) for e in pie.elements] == [
        ("x", 90, 1),
        ("y", 90, 1),
        ("z", 180, 1),
    ]

    for chart in charts:
        width, height = png_size(chart.png)
        assert width > 100 and height > 100


def test_box_plots_and_subplots_are_charted(sandbox):
    response = run(
        sandbox,
        """
        import matplotlib.pyplot as plt
        fig, (left, right) = plt.subplots(1, 2)
        fig.suptitle("Two Panels")
        left.boxplot([[1, 2, 3, 4, 5], [2, 4, 6, 8, 30]], labels=["small", "big"])
        left.set_title("Spread")
        right.plot([1, 2], [3, 4])
        right.set_title("Trend")
        plt.show()

        plt.boxplot([[1, 2, 3, 4, 5]], labels=["only"])
        plt.title("One Box")
        plt.show()
        """,
    )
    composite, box = response.artifacts.charts
    assert composite.type == ChartType.COMPOSITE_CHART
    assert composite.title == "Two Panels"
    assert [(e.type, e.title) for e in composite.elements] == [
        ("box_and_whisker", "Spread"),
        ("line", "Trend"),
    ]
    png_size(composite.png)

    assert box.type == ChartType.BOX_AND_WHISKER and box.title == "One Box"
    (only,) = box.elements
    assert only.label == "only"
    assert (only.min, only.first_quartile, only.median, only.third_quartile, only.max) == (
        1,
        2,
        3,
        4,
        5,
    )
    assert only.outliers == []


def test_code_without_figures_has_no_charts_and_plain_python_is_untouched(sandbox):
    response = run(sandbox, "import matplotlib.pyplot as plt\nprint('no figures')\n")
    assert response.result == "no figures\n"
    assert response.artifacts.charts == []
    # Outside code_run, plt.show() is matplotlib's own (Agg: nothing shown,
    # nothing printed on stdout).
    response = sandbox.process.exec(
        "python3 -c \"import matplotlib.pyplot as plt; plt.plot([1]); plt.show(); print('ok')\" 2>/dev/null"
    )
    assert response.exit_code == 0
    assert response.result == "ok\n"


def test_a_failing_run_still_returns_its_figures_and_its_traceback(sandbox):
    response = sandbox.process.code_run(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.title('Partial')\nraise ValueError('late')\n"
    )
    assert response.exit_code == 1
    assert response.result.startswith("Traceback (most recent call last):\n")
    assert 'File "<stdin>", line 4, in <module>' in response.result
    assert response.result.endswith("ValueError: late\n")
    assert [c.title for c in response.artifacts.charts] == ["Partial"]


# -- entrypoint ----------------------------------------------------------------------


def entrypoint_processes(sandbox):
    response = sandbox.process.exec("ps -eo user=,args=")
    assert response.exit_code == 0
    return [line.split(None, 1) for line in response.result.splitlines() if "sleep infinity" in line]


def test_the_entrypoint_session_shows_sleep_infinity_running(sandbox):
    session = sandbox.process.get_entrypoint_session()
    assert session.session_id == "entrypoint_session_id"
    (command,) = session.commands
    assert command.id == "entrypoint_command_id"
    assert command.command == "sleep infinity"
    assert command.exit_code is None
    assert entrypoint_processes(sandbox) == [["daytona", "sleep infinity"]]
    logs = sandbox.process.get_entrypoint_logs()
    assert (logs.output, logs.stdout, logs.stderr) == ("", "", "")
    # It is not one of the sessions the SDK lists or may create.
    assert all(s.session_id != "entrypoint_session_id" for s in sandbox.process.list_sessions())


def test_the_entrypoint_starts_again_after_a_restart(sandbox):
    sandbox.stop()
    sandbox.start()
    (command,) = sandbox.process.get_entrypoint_session().commands
    assert command.command == "sleep infinity" and command.exit_code is None
    assert entrypoint_processes(sandbox) == [["daytona", "sleep infinity"]]
