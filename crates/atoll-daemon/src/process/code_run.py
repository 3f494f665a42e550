# Atoll's code-run driver for Python, run as `python3 -u -c <this> [argv...]`
# with the user's code on stdin (see code_run.rs).
#
# It runs the code the way `python3 -u -` would: in a fresh `__main__` module,
# `sys.argv[0] == "-"`, tracebacks naming `<stdin>`, exit status 1 on an
# uncaught exception. On top of that it reports matplotlib figures as chart
# artifacts (Daytona's code-run chart protocol): every figure open at a
# `plt.show()`, and every figure still open when the code ends, is described
# (chart type, title, axes, elements, a PNG) and written as one JSON line
# `{"type": "chart", "value": {...}}` to file descriptor 3, which the daemon
# reads and returns as `artifacts.charts`. The code's stdout and stderr are
# left alone. matplotlib is only touched when the code imports pyplot.

import sys


def _atoll_driver():
    import builtins
    import os
    import types

    try:
        os.set_inheritable(3, False)
        channel = 3
    except OSError:
        channel = None

    def send(record):
        import json

        data = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        while data:
            data = data[os.write(channel, data) :]

    def emit_open_figures():
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        try:
            figures = [pyplot.figure(n) for n in pyplot.get_fignums()]
        except Exception:
            return
        for figure in figures:
            if channel is None:
                break
            try:
                chart = _describe_figure(figure)
            except Exception:
                continue
            try:
                send({"type": "chart", "value": chart})
            except (OSError, ValueError, TypeError):
                pass
        try:
            pyplot.close("all")
        except Exception:
            pass

    def patch_pyplot(pyplot):
        def show(*args, **kwargs):
            emit_open_figures()

        show.__doc__ = pyplot.show.__doc__
        pyplot.show = show
        try:
            _record_boxplots(sys.modules["matplotlib.axes"].Axes)
        except Exception:
            pass

    class PyplotLoader:
        def __init__(self, loader):
            self._loader = loader

        def __getattr__(self, name):
            return getattr(self._loader, name)

        def create_module(self, spec):
            return self._loader.create_module(spec)

        def exec_module(self, module):
            self._loader.exec_module(module)
            patch_pyplot(module)

    class PyplotFinder:
        """Wraps the loader of `matplotlib.pyplot` so it is patched on import."""

        def find_spec(self, name, path=None, target=None):
            if name != "matplotlib.pyplot":
                return None
            sys.meta_path.remove(self)
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                spec = find(name, path, target) if find else None
                if spec is not None:
                    break
            else:
                return None
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = PyplotLoader(spec.loader)
            return spec

    code = sys.stdin.buffer.read()
    sys.argv[0] = "-"
    main = types.ModuleType("__main__")
    main.__file__ = "<stdin>"
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    sys.meta_path.insert(0, PyplotFinder())
    try:
        exec(compile(code, "<stdin>", "exec"), main.__dict__)
    except SystemExit:
        emit_open_figures()
        raise
    except Exception as e:
        emit_open_figures()
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == "<string>":
            tb = tb.tb_next
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        sys.exit(1)
    except BaseException:
        emit_open_figures()
        raise
    emit_open_figures()


# -- describing figures -------------------------------------------------------


def _num(v):
    """A finite float, or None."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f and f not in (float("inf"), float("-inf")) else None


def _nums(values):
    out = []
    for v in values:
        f = _num(v)
        if f is not None:
            out.append(f)
    return out


def _points(xy):
    points = []
    for row in xy:
        try:
            x, y = _num(row[0]), _num(row[1])
        except (IndexError, TypeError):
            continue
        if x is not None and y is not None:
            points.append([x, y])
    return points


def _value_text(v):
    f = _num(v)
    if f is None:
        return str(v)
    if f.is_integer() and abs(f) < 1e15:
        return str(int(f))
    return repr(f)


def _record_boxplots(axes_class):
    """Keeps the statistics every `Axes.bxp` (boxplot) draws on its axes."""
    import inspect

    original = axes_class.bxp
    if getattr(original, "_atoll", False):
        return
    signature = inspect.signature(original)

    def bxp(self, bxpstats, *args, **kwargs):
        result = original(self, bxpstats, *args, **kwargs)
        try:
            bound = signature.bind(self, bxpstats, *args, **kwargs)
            arguments = bound.arguments
            vertical = arguments.get("vert", True)
            if arguments.get("orientation") is not None:
                vertical = arguments["orientation"] == "vertical"
            stats = list(bxpstats)
            positions = arguments.get("positions") or range(1, len(stats) + 1)
            boxes = self.__dict__.setdefault("_atoll_boxplots", [])
            boxes.append((stats, list(positions), bool(vertical)))
        except Exception:
            pass
        return result

    bxp._atoll = True
    bxp.__doc__ = original.__doc__
    axes_class.bxp = bxp


def _ticks(axis):
    """The major ticks' positions and their labels, as drawn."""
    locs = list(axis.get_majorticklocs())
    return locs, [str(t) for t in axis.get_major_formatter().format_ticks(locs)]


def _tick_label_at(axis, position, tolerance):
    best = None
    for loc, text in zip(*_ticks(axis)):
        distance = abs(float(loc) - position)
        if distance <= tolerance and (best is None or distance < best[0]):
            best = (distance, text)
    if best is not None and best[1]:
        return best[1]
    return "%g" % position


def _axis_info(axis):
    from matplotlib import category, dates

    formatter = axis.get_major_formatter()
    date_formatters = (dates.DateFormatter, dates.AutoDateFormatter, dates.ConciseDateFormatter)
    if isinstance(axis.units, category.UnitData):
        scale = "categorical"
    elif isinstance(formatter, date_formatters):
        scale = "datetime"
    else:
        scale = axis.get_scale()
    locs, labels = _ticks(axis)
    kept = [(f, label) for f, label in zip((_num(v) for v in locs), labels) if f is not None]
    return [f for f, _ in kept], [label for _, label in kept], scale


def _title(ax):
    return ax.get_title() or ax.get_title("left") or ax.get_title("right")


def _is_chart_axes(ax):
    if hasattr(ax, "_colorbar") or hasattr(ax, "_colorbar_info"):
        return False
    return ax.has_data() or bool(ax.__dict__.get("_atoll_boxplots"))


def _flatten(container):
    for item in container:
        if item is None:
            continue
        if isinstance(item, (list, tuple)):
            yield from _flatten(item)
        else:
            yield item


def _elements(ax):
    """(chart type, elements) of one axes."""
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer
    from matplotlib.patches import Wedge

    boxplots = ax.__dict__.get("_atoll_boxplots")
    if boxplots:
        elements = []
        vertical = True
        for stats, positions, vertical in boxplots:
            axis = ax.xaxis if vertical else ax.yaxis
            for i, s in enumerate(stats):
                label = s.get("label")
                if label is None and i < len(positions):
                    label = _tick_label_at(axis, float(positions[i]), 0.25)
                elements.append(
                    {
                        "label": str(label if label is not None else i + 1),
                        "min": _num(s.get("whislo")),
                        "first_quartile": _num(s.get("q1")),
                        "median": _num(s.get("med")),
                        "third_quartile": _num(s.get("q3")),
                        "max": _num(s.get("whishi")),
                        "outliers": _nums(s.get("fliers", [])),
                    }
                )
        return "box_and_whisker", elements, not vertical

    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    contained = {id(a) for c in ax.containers for a in _flatten(c)}
    lines = [
        line
        for line in ax.lines
        if id(line) not in contained and line.get_transform() is ax.transData
    ]
    collections = [c for c in ax.collections if id(c) not in contained]
    patches = [p for p in ax.patches if id(p) not in contained]

    if bars and not (lines or collections or patches):
        elements = []
        horizontal = False
        for container in bars:
            horizontal = container.orientation == "horizontal"
            group = container.get_label()
            for rect in container.patches:
                if horizontal:
                    position = rect.get_y() + rect.get_height() / 2
                    value = rect.get_width()
                    label = _tick_label_at(ax.yaxis, position, abs(rect.get_height()))
                else:
                    position = rect.get_x() + rect.get_width() / 2
                    value = rect.get_height()
                    label = _tick_label_at(ax.xaxis, position, abs(rect.get_width()))
                elements.append({"label": label, "group": group, "value": _value_text(value)})
        return "bar", elements, horizontal
    if patches and all(isinstance(p, Wedge) for p in patches) and not (lines or collections or bars):
        elements = [
            {
                "label": w.get_label(),
                "angle": _num(abs(w.theta2 - w.theta1)),
                "radius": _num(w.r),
            }
            for w in patches
        ]
        return "pie", elements, False
    if collections and all(isinstance(c, PathCollection) for c in collections) and not (
        lines or patches or bars
    ):
        elements = [{"label": c.get_label(), "points": _points(c.get_offsets())} for c in collections]
        return "scatter", elements, False
    if lines and not (collections or patches or bars):
        elements = [{"label": line.get_label(), "points": _points(line.get_xydata())} for line in lines]
        return "line", elements, False
    return "unknown", [], False


def _describe_axes(ax):
    kind, elements, swapped = _elements(ax)
    chart = {"type": kind, "title": _title(ax), "elements": elements}
    if kind != "pie":
        x_label, y_label = ax.get_xlabel(), ax.get_ylabel()
        if swapped:
            # The categories' axis is the x axis of a chart, whichever way it is drawn.
            x_label, y_label = y_label, x_label
        chart["x_label"], chart["y_label"] = x_label, y_label
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            ticks, labels, scale = _axis_info(axis)
            chart[name + "_ticks"] = ticks
            chart[name + "_tick_labels"] = labels
            chart[name + "_scale"] = scale
    return chart


def _describe_figure(figure):
    import base64
    import io

    # Drawing first also fills in the tick labels read below.
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", dpi=100)
    png = base64.b64encode(buffer.getvalue()).decode("ascii")
    suptitle = figure._suptitle.get_text() if getattr(figure, "_suptitle", None) else ""
    charts = []
    for ax in figure.axes:
        if not _is_chart_axes(ax):
            continue
        try:
            charts.append(_describe_axes(ax))
        except Exception:
            charts.append({"type": "unknown", "title": _title(ax), "elements": []})
    if len(charts) == 1:
        chart = charts[0]
        if not chart["title"] and suptitle:
            chart["title"] = suptitle
    elif charts:
        chart = {"type": "composite_chart", "title": suptitle, "elements": charts}
    else:
        chart = {"type": "unknown", "title": suptitle, "elements": []}
    chart["png"] = png
    return chart


_atoll_driver()
