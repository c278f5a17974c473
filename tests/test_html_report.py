"""HTML reports (issue 19): every verb's ``--html`` page, loaded in headless Chromium from
``file://`` with the network blocked -- no console error, no request leaving the file, every chart
drawn, every number on the page equal to the verb's JSON -- and ``mmopt view`` serving the
annotated graph with Netron on a loopback port.

The model is the zoo's trained digits CNN (a real model, small enough to compile in seconds); the
six verbs run once, side by side, in a module fixture. The test also takes a screenshot of each
page; with ``MMOPT_REPORT_SCREENSHOTS=DIR`` it keeps them there (``docs/images`` is made so:
``bash scripts/report-screenshots.sh``).

Chromium: Debian's ``chromium`` and ``chromium-driver`` (scripts/setup.sh installs them), driven by
selenium. Where they are missing the browser tests skip, saying so; the rest still runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest

from mmopt import ir as mir
from mmopt.report.data import finite

KINDS = ("compile", "profile", "tune", "quantize", "check", "bench")

#: charts each page must draw for the runs below (every chart the data allows)
CHARTS = {
    "compile": {"pass-nodes", "ops", "profile-kernels"},
    "profile": {"kernels", "onnxruntime-ops"},
    "tune": {"model-latency", "model-history", "task-history", "task-default-vs-tuned"},
    "quantize": {"search-steps", "sensitivities", "layers", "ranges"},
    "check": {"accuracy", "layers"},
    "bench": {"latency-distribution", "latency-calls", "memory"},
}

SCREENSHOTS = os.environ.get("MMOPT_REPORT_SCREENSHOTS")
#: trials of the tune run: a few, or enough for a picture when the screenshots are kept
TUNE_TRIALS = 12 if SCREENSHOTS else 2


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "mmopt.cli.main", *map(str, args)]


# --------------------------------------------------------------------------------------------------
# the runs


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The trained digits CNN, a copy made hostile to int8 (one channel scaled: the same float
    function), calibration and held-out data, and the hostile copy quantized without care."""
    pytest.importorskip("sklearn", reason="the digits model trains on scikit-learn's data set")
    from mmopt.quantize import quantize
    from models_zoo.digits import train_digits_cnn
    from tests.test_quantize_models import _imbalanced

    work = tmp_path_factory.mktemp("reports")
    model, splits = train_digits_cnn()
    fixed = {"input": (1, 1, 8, 8)}
    mir.save(mir.fix_input_shapes(model, fixed), work / "digits.onnx")
    hostile = mir.fix_input_shapes(_imbalanced(model), fixed)
    mir.save(hostile, work / "hostile.onnx")
    np.savez(work / "calib.npz", input=splits.calib_x.astype(np.float32))
    np.savez(work / "eval.npz", input=splits.test_x.astype(np.float32), labels=splits.test_y)
    np.savez(work / "heldout.npz", input=splits.test_x.astype(np.float32))
    np.save(work / "labels.npy", splits.test_y)
    naive, _ = quantize(hostile, {"input": splits.calib_x}, method="minmax")
    mir.save(naive, work / "hostile.int8.onnx")
    return work


#: kind -> (command, where its JSON is: "stdout" or a file name)
def _commands() -> dict[str, tuple[list[str], str]]:
    return {
        "compile": (_cli("compile", "digits.onnx", "-o", "out/digits", "--json",
                         "--html", "compile.html"), "stdout"),
        "profile": (_cli("profile", "digits.onnx", "--runs", "3", "--warmup", "1", "--vs",
                         "onnxruntime", "--json", "profile.json", "--html", "profile.html"),
                    "profile.json"),
        "tune": (_cli("tune", "digits.onnx", "--db", "db", "--trials", TUNE_TRIALS, "--json",
                      "--html", "tune.html"), "stdout"),
        "quantize": (_cli("quantize", "hostile.onnx", "-o", "hostile.aa.onnx", "--calib",
                          "calib.npz", "--method", "minmax", "--eval", "eval.npz", "--max-drop",
                          "0.5%", "--report", "quantize.json", "--html", "quantize.html"),
                     "quantize.json"),
        "check": (_cli("check", "-r", "hostile.onnx", "-c", "hostile.int8.onnx", "-d",
                       "heldout.npz", "--labels", "labels.npy", "--max-drop", "0.5%",
                       "--min-cosine", "0.99", "--per-layer", "--report", "check.json",
                       "--html", "check.html"), "check.json"),
        "bench": (_cli("bench", "digits.onnx", "--repeat", "20", "--warmup", "2", "--json",
                       "--html", "bench.html"), "stdout"),
    }


#: exit codes the runs above end with (the careless int8 model fails its gate)
EXIT = {"check": 1}


@pytest.fixture(scope="module")
def runs(work) -> dict[str, tuple[dict, Path]]:
    """Every verb run once with ``--html``: kind -> (its JSON report, its HTML page). All at once
    (they wait on processes and devices as much as they compute); one after the other when the
    screenshots are kept, so that the timings they show are the machine's, not the runs'."""
    def start(cmd):
        return subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def finish(proc):
        return (*proc.communicate(timeout=900), proc.returncode)

    if SCREENSHOTS:
        done = {kind: finish(start(cmd)) for kind, (cmd, _where) in _commands().items()}
    else:
        started = {kind: start(cmd) for kind, (cmd, _where) in _commands().items()}
        done = {kind: finish(proc) for kind, proc in started.items()}
    results = {}
    for kind, (_cmd, where) in _commands().items():
        stdout, stderr, returncode = done[kind]
        assert returncode == EXIT.get(kind, 0), f"{kind}: {stdout}\n{stderr}"
        text = stdout if where == "stdout" else (work / where).read_text()
        data = json.loads(text)
        assert data["kind"] == kind
        results[kind] = (data, work / f"{kind}.html")
    return results


# --------------------------------------------------------------------------------------------------
# the pages as files


@pytest.mark.parametrize("kind", KINDS)
def test_page_is_self_contained_and_holds_the_json(runs, kind):
    data, page = runs[kind]
    text = page.read_text(encoding="utf-8")
    # nothing fetched: no external scripts, styles, images, fonts or frames
    assert not re.search(r"""<(script|link|img|iframe|source|embed)\b[^>]*\b(src|href)\s*=""",
                         text, re.I), "the page loads something from outside"
    assert not re.search(r"""url\(\s*['"]?(https?:)?//""", text, re.I), "a style loads a URL"
    assert text.count("plotly.js v") == 1  # the charting library, inlined once
    assert f'<meta name="mmopt-report" content="{kind}">' in text
    # the data island is the verb's JSON (non-finite numbers as strings)
    island = re.search(r'<script type="application/json" id="mmopt-report-data">(.*?)</script>',
                       text, re.S)
    assert json.loads(island.group(1)) == finite(data)


def test_report_command_renders_a_saved_json(runs, work, tmp_path):
    """``mmopt report RUN.json`` makes the page ``--html`` made, from the file alone."""
    from click.testing import CliRunner

    from mmopt.cli.main import cli

    def report(*args):
        return CliRunner().invoke(cli, ["report", *map(str, args)], catch_exceptions=False)

    out = tmp_path / "again.html"
    result = report(work / "quantize.json", "-o", out)
    assert result.exit_code == 0 and "quantize report" in result.output, result.output
    strip = lambda t: re.sub(r"page made [^<]*", "", t)  # noqa: E731 - the timestamp differs
    assert strip(out.read_text()) == strip((work / "quantize.html").read_text())
    # an artifact's own NAME.json is a compile report too
    result = report(work / "out" / "digits.json", "-o", tmp_path / "a.html")
    assert result.exit_code == 0 and "compile report" in result.output, result.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    result = report(bad)
    assert result.exit_code == 2 and "not an mmopt report" in result.output


def test_json_reports_carry_what_the_pages_draw(runs):
    """The fields added for the pages are in the verbs' JSON (one path: JSON -> HTML)."""
    compile_ = runs["compile"][0]
    assert compile_["passes"]["passes"] and compile_["profile"]["kernels"]
    assert compile_["warnings"] == [] and compile_["passed"] is True
    tune = runs["tune"][0]
    assert tune["history"] and tune["history"][-1]["tasks"] == len(tune["tasks"])
    searched = [t for t in tune["tasks"] if t["trials"]]
    assert searched
    for t in searched:  # the baseline, a point per trial (and one after the recheck)
        counts, bests = [p[0] for p in t["history"]], [p[1] for p in t["history"]]
        assert counts[0] == t["trials_before"] and counts[-1] == t["trials_before"] + t["trials"]
        assert set(range(t["trials"] + 1)) <= set(counts) and counts == sorted(counts)
        assert bests == sorted(bests, reverse=True) and bests[-1] == t["best_s"]
    quantize = runs["quantize"][0]
    ranges = quantize["calibration_ranges"]
    assert len(ranges) == quantize["tensors_calibrated"]
    assert all(r["min"] <= r["lo"] <= r["hi"] <= r["max"] for r in ranges)
    assert quantize["per_layer"]["layers"] and quantize["accuracy_aware"]["met"]
    check = runs["check"][0]
    assert check["per_layer"]["culprit"]["node"] in {"conv1", "relu1", "conv2", "relu2"}
    bench = runs["bench"][0]
    for engine in ("mmopt", "onnxruntime"):
        samples = bench[engine]["samples_ms"]
        assert len(samples) == bench[engine]["runs"] == 20
        assert min(samples) == bench[engine]["min_ms"]


# --------------------------------------------------------------------------------------------------
# the pages in a browser


@pytest.fixture(scope="module")
def browser():
    chromium = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                     if shutil.which(b)), None)
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("no headless Chromium here: scripts/setup.sh installs Debian's chromium and "
                    "chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="selenium drives Chromium (the [test] extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1400", "--hide-scrollbars",
                # every request that is not to this machine goes to a closed port
                "--proxy-server=http://127.0.0.1:9", "--disable-background-networking",
                "--disable-component-update", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


_CHARTS_DRAWN = """
return Array.from(document.querySelectorAll('.chart')).every(c => {
  const p = c.querySelector('.js-plotly-plot');
  return p && p._fullLayout && p.querySelector('svg.main-svg')
         && p.getBoundingClientRect().height > 100;
});"""

_PAGE_STATE = """
const plot = (c) => c.querySelector('.js-plotly-plot');
return {
  data: JSON.parse(document.getElementById('mmopt-report-data').textContent),
  values: Array.from(document.querySelectorAll('[data-key]')).map(e => [
    e.getAttribute('data-key'), e.getAttribute('data-value'), e.textContent,
    e.getAttribute('data-scale')]),
  charts: Object.fromEntries(Array.from(document.querySelectorAll('.chart')).map(c => [
    c.dataset.chart, {
      traces: plot(c).data.map(t => ({name: t.name === undefined ? null : t.name,
                                      x: t.x || null, y: t.y || null, base: t.base || null})),
      shapes: (plot(c).layout.shapes || []).map(s => ({x0: s.x0, y0: s.y0})),
      bars: plot(c).querySelectorAll('.bars path, .boxlayer path, .scatterlayer path').length}])),
  resources: performance.getEntriesByType('resource').map(r => r.name),
};"""


def _open(browser, page: Path) -> dict:
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get_log("performance")
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs",
                            {"urls": ["http://*", "https://*", "ws://*", "wss://*"]})
    browser.get(page.as_uri())
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 60).until(lambda d: d.execute_script(_CHARTS_DRAWN))
    return browser.execute_script(_PAGE_STATE)


def _lookup(data, path):
    for step in path:
        data = data[step]
    return data


def _shown_matches(text: str, value: float, scale: float) -> bool:
    """``text`` (e.g. "12.35 ms", "1.2e-05", "99.00%") is ``value`` x ``scale`` rounded to the
    digits it shows."""
    match = re.search(r"[-+]?(\d[\d,]*\.?\d*|\.\d+)(e[-+]?\d+)?", text, re.I)
    assert match, text
    number = match.group(0).replace(",", "")
    mantissa = number.lower().split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    exponent = int(number.lower().split("e")[1]) if "e" in number.lower() else 0
    step = 10.0 ** (exponent - decimals)
    shown = value * scale
    return abs(float(number) - shown) <= 0.5 * step * (1 + 1e-9) + 1e-12 * abs(shown)


@pytest.mark.parametrize("kind", KINDS)
def test_page_in_chromium(runs, browser, kind, tmp_path):
    data, page = runs[kind]
    state = _open(browser, page)
    # no console errors, no request leaving the file
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in requests
            if m["method"] == "Network.requestWillBeSent"]
    assert all(u.startswith(("file:", "data:", "about:", "blob:")) for u in urls), urls
    assert all(r.startswith(("file:", "data:", "blob:")) for r in state["resources"]), state
    assert state["data"] == finite(data)
    # every chart the data allows is drawn, with marks in it
    assert set(state["charts"]) == CHARTS[kind]
    assert all(c["bars"] > 0 for c in state["charts"].values()), state["charts"]
    # every value the tables show is the JSON's, and reads as its rounding
    assert len(state["values"]) >= 8
    json_data = finite(data)
    for key, raw, text, scale in state["values"]:
        path = json.loads(key)
        expected = _lookup(json_data, path)
        assert json.loads(raw) == expected, (path, raw, expected)
        if isinstance(expected, (int, float)) and not isinstance(expected, bool):
            assert _shown_matches(text, expected, float(scale or 1)), (path, text, expected)
    CHART_CHECKS[kind](json_data, state["charts"])
    _screenshot(browser, kind, tmp_path)


def _same(a, b):
    assert len(a) == len(b), (a, b)
    for x, y in zip(a, b):
        assert (x is None and y is None) or x == pytest.approx(y, rel=1e-12, abs=1e-15), (a, b)


def _compile_charts(d, charts):
    passes = d["passes"]["passes"]
    _same(charts["pass-nodes"]["traces"][0]["y"],
          [passes[0]["nodes_before"]] + [p["nodes_after"] for p in passes])
    kernels = sorted(d["profile"]["kernels"], key=lambda k: (-k["median_ms"], k["index"]))
    trace = charts["profile-kernels"]["traces"][0]
    _same(trace["x"], [k["median_ms"] for k in kernels])
    assert trace["y"] == [f"#{k['index']} {k['name']}" for k in kernels]
    ops = charts["ops"]["traces"]
    assert sum(ops[0]["y"]) == d["passes"]["nodes_before"]
    assert sum(ops[1]["y"]) == d["passes"]["nodes_after"]


def _profile_charts(d, charts):
    kernels = sorted(d["kernels"], key=lambda k: (-k["median_ms"], k["index"]))
    _same(charts["kernels"]["traces"][0]["x"], [k["median_ms"] for k in kernels])
    between = charts["kernels"]["traces"][1]
    assert between["y"] == ["(between kernels)"]
    _same(between["x"], [max(d["between_ms"], 0.0)])
    # by op type, mmopt's bars beside onnxruntime's, from the paired rows
    paired = d["ops_vs_onnxruntime"]
    mmopt_bars, ort_bars = charts["onnxruntime-ops"]["traces"]
    assert mmopt_bars["y"] == ort_bars["y"] == [r["op_type"] for r in paired]
    _same(mmopt_bars["x"], [r["mmopt_ms"] or 0.0 for r in paired])
    _same(ort_bars["x"], [r["onnxruntime_ms"] or 0.0 for r in paired])
    assert sum(ort_bars["x"]) == pytest.approx(sum(op["median_ms"]
                                                   for op in d["onnxruntime"]["ops"]))


def _tune_charts(d, charts):
    _same(charts["model-history"]["traces"][0]["y"], [h["latency_s"] * 1e3 for h in d["history"]])
    _same(charts["model-history"]["traces"][0]["x"], [h["trials"] for h in d["history"]])
    _same(charts["model-latency"]["traces"][0]["x"],
          [d["latency"]["default_ms"], d["latency"]["tuned_ms"]])
    searched = {t["name"]: t for t in d["tasks"] if len(t["history"]) > 1}
    traces = charts["task-history"]["traces"]
    assert {t["name"] for t in traces} == set(searched)
    for t in traces:
        _same(t["y"], [p[1] * 1e6 for p in searched[t["name"]]["history"]])
    default, tuned = charts["task-default-vs-tuned"]["traces"]
    by_name = {t["name"]: t for t in d["tasks"]}
    _same(default["x"], [by_name[n]["default_s"] * 1e6 for n in default["y"]])
    _same(tuned["x"], [by_name[n]["best_s"] * 1e6 for n in tuned["y"]])


def _layers(per, chart):
    snr = chart["traces"][0]
    _same(snr["x"], [layer["index"] for layer in per["layers"]])
    _same(snr["y"], [v if isinstance(v, (int, float)) else None
                     for v in (layer["snr_db"] for layer in per["layers"])])
    culprit = per["culprit"]
    assert [s["x0"] for s in chart["shapes"]] == ([culprit["index"]] if culprit else [])


def _quantize_charts(d, charts):
    steps = d["accuracy_aware"]["steps"]
    _same(charts["search-steps"]["traces"][0]["y"], [s["drop"] for s in steps])
    assert charts["search-steps"]["shapes"][0]["y0"] == d["accuracy_aware"]["max_drop"]
    seen, chosen = charts["ranges"]["traces"]
    ranges = d["calibration_ranges"]
    _same(seen["base"], [r["min"] for r in ranges])
    _same(chosen["base"], [r["lo"] for r in ranges])
    _same([b + x for b, x in zip(chosen["base"], chosen["x"])], [r["hi"] for r in ranges])
    _layers(d["per_layer"], charts["layers"])


def _check_charts(d, charts):
    _layers(d["per_layer"], charts["layers"])
    reference, candidate = charts["accuracy"]["traces"]
    _same(reference["y"], [o["accuracy_reference"] * 100 for o in d["outputs"]])
    _same(candidate["y"], [o["accuracy_candidate"] * 100 for o in d["outputs"]])


def _bench_charts(d, charts):
    boxes = charts["latency-distribution"]["traces"]
    assert [b["name"] for b in boxes] == ["mmopt", "onnxruntime"]
    for box in boxes:
        _same(box["x"], d[box["name"]]["samples_ms"])
    for line in charts["latency-calls"]["traces"]:
        _same(line["y"], d[line["name"]]["samples_ms"])


CHART_CHECKS = {"compile": _compile_charts, "profile": _profile_charts, "tune": _tune_charts,
                "quantize": _quantize_charts, "check": _check_charts, "bench": _bench_charts}


def _screenshot(browser, name: str, tmp_path: Path, height: int | None = None) -> Path:
    """The page (1100 wide; ``height`` high, else all of it up to 2600) as a small PNG (256
    colours); kept in ``$MMOPT_REPORT_SCREENSHOTS`` when set."""
    from PIL import Image

    if height is None:
        height = min(2600, browser.execute_script("return document.documentElement.scrollHeight")
                     + 140)  # the window's own bars
    browser.set_window_size(1100, height)
    time.sleep(0.5)  # plotly redraws responsive charts at the new width
    raw = tmp_path / f"{name}.raw.png"
    browser.save_screenshot(str(raw))
    browser.set_window_size(1280, 1400)
    folder = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"report-{name}.png"
    with Image.open(raw) as image:
        assert image.size[0] >= 900 and len(image.getcolors(1 << 24) or []) > 8  # not blank
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
            path, optimize=True)
    return path


# --------------------------------------------------------------------------------------------------
# mmopt view


def _read_url(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, list[str]]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        if match:
            return match.group(0), lines
    raise AssertionError("no URL printed: " + "".join(lines) + proc.stderr.read())


def test_view_serves_the_annotated_graph(runs, work, browser_if_any, tmp_path):
    """``mmopt view REPORT.json --no-browser``: Netron on a free loopback port; the page and the
    model it serves come from that port; every node a kernel computes names the kernel and its
    time; Ctrl-C stops the server and frees the port."""
    data, _page = runs["compile"]
    (work / "compile-report.json").write_text(json.dumps(data))
    # faulthandler: a process that does not stop prints every thread's stack on SIGABRT.
    # Started with SIGINT ignored, as a script's background job (or a test runner's worker) is:
    # Ctrl-C must stop it all the same.
    proc = subprocess.Popen(_cli("view", "compile-report.json", "--no-browser"), cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        url, lines = _read_url(proc)
        assert "annotated with their kernel and time" in "".join(lines)
        with urllib.request.urlopen(url, timeout=30) as response:
            index = response.read().decode()
        assert response.status == 200 and "<title>Netron</title>" in index
        model_path = re.search(r'<meta name="file" content="([^"]+)"', index).group(1)
        with urllib.request.urlopen(url + model_path, timeout=30) as response:
            served = onnx.load_from_string(response.read())
        # per node, the kernel calls that compute it in call order: the steps of a decomposed op
        # (a Winograd convolution's transforms and GEMM: "helper") and the kernel finishing it
        by_node: dict[str, list[dict]] = {}
        for k in sorted(data["profile"]["kernels"], key=lambda k: k["index"]):
            if k["mapping"] in ("value", "helper"):
                for n in k["onnx_nodes"]:
                    by_node.setdefault(n, []).append(k)
        kernels = {n: ks[-1] for n, ks in by_node.items() if ks[-1]["mapping"] == "value"}
        props = {n.name: {p.key: p.value for p in n.metadata_props} for n in served.graph.node}
        assert set(kernels) <= set(props)
        for node in kernels:
            calls = by_node[node]
            assert props[node]["mmopt.kernel"] == "; ".join(k["name"] for k in calls)
            times = [float(t) for t in props[node]["mmopt.kernel_ms"].split("; ")]
            assert times == pytest.approx([k["median_ms"] for k in calls], abs=5e-5)
            assert props[node]["mmopt.fused_with"] == "; ".join(", ".join(k["onnx_nodes"])
                                                                for k in calls)
        if browser_if_any is not None:
            _netron_in_browser(browser_if_any, url, kernels, tmp_path)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            stdout, stderr = proc.communicate(timeout=60)
            raise AssertionError("mmopt view did not stop within 60 s of Ctrl-C; its threads:\n"
                                 + stdout + stderr) from None
    assert proc.returncode == 0, stdout + stderr
    assert "stopped" in stdout
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)
    assert port > 0


@pytest.fixture
def browser_if_any(request):
    """The browser where there is one (the view test's page checks need it; its server checks do
    not)."""
    try:
        return request.getfixturevalue("browser")
    except pytest.skip.Exception:
        return None


def _netron_in_browser(browser, url: str, kernels: dict, tmp_path: Path) -> None:
    """Netron draws the graph, and a node's properties show its kernel (Netron's own page asks
    for cookie consent and tries to reach its telemetry: the proxy refuses those requests)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
    browser.set_window_size(1280, 800)
    browser.get(url)
    node = sorted(kernels)[0] if "conv2" not in kernels else "conv2"

    def ready(d):
        for button in d.find_elements(By.TAG_NAME, "button"):
            if button.is_displayed() and button.text.strip().lower() == "accept":
                button.click()
        return d.find_elements(By.ID, f"node-name-{node}")

    WebDriverWait(browser, 60).until(ready)

    sidebar = """const s = document.getElementById('sidebar');
                 return s ? [s.innerText, Array.from(s.querySelectorAll('input')).map(i => i.value)]
                          : ['', []];"""

    def properties_shown(d):  # click the node until Netron has wired it up and shows its sidebar
        shape = d.find_element(By.CSS_SELECTOR, f"#node-name-{node} path")
        d.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))",
                         shape)
        return "mmopt.kernel" in d.execute_script(sidebar)[1]

    WebDriverWait(browser, 60, poll_frequency=1.0).until(properties_shown)
    text, names = browser.execute_script(sidebar)
    assert {"mmopt.kernel", "mmopt.kernel_ms", "mmopt.fused_with"} <= set(names)
    assert kernels[node]["name"] in text  # the value beside mmopt.kernel, and the description
    _screenshot(browser, "netron", tmp_path, height=800)
    browser.set_window_size(1280, 1400)
