"""`peftbench report`: bad input fails on one line, and the page of a small real sweep opens in headless Chromium
with no console error, every image loaded, every section present and no request to anything but file:// URLs.

The browser checks run Chromium twice: `--dump-dom` on a copy of the page with a test-only script that writes
what it saw into the DOM (the page itself has no script), then `--screenshot` of the whole page. Requests are
read from Chromium's own network log, so a request the page made is seen even if it failed."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import FAST, build_record, write_built

from peftbench.harness.cli import main

SECTIONS = ("verdict", "ranks", "schedule", "detectors", "cost", "leaderboard", "pareto")

# Written into a copy of the page only: errors of any kind (script, console, a resource that failed to load)
# land in a list, and after `load` the images, the non-file resources and the page height go into the DOM.
CHECK_HEAD = """<script>
window.__errors = [];
addEventListener('error', e => __errors.push(String(e.message || (e.target && (e.target.src || e.target.href)))), true);
for (const level of ['error', 'warn']) {
  const original = console[level];
  console[level] = (...args) => { __errors.push(level + ': ' + args.join(' ')); original.apply(console, args); };
}
</script>"""
CHECK_TAIL = """<script>
addEventListener('load', () => {
  const b = document.body, imgs = [...document.images];
  b.dataset.images = imgs.length;
  b.dataset.badImages = JSON.stringify(imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src));
  b.dataset.foreign = JSON.stringify(performance.getEntriesByType('resource').map(r => r.name)
                                      .filter(u => !u.startsWith('file:')));
  b.dataset.errors = JSON.stringify(__errors);
  b.dataset.height = document.documentElement.scrollHeight;
});
</script>"""


def _fails(capsys, argv, *needles) -> None:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    _fails(capsys, ["report", "--results", str(tmp_path / "nothing")], "no run records")
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    _fails(capsys, ["report", "--results", str(tmp_path / "empty")], "no readable run records")
    other = tmp_path / "other"
    write_built(other, build_record("rte", "lora", 0, 0.6, budget="2K"))
    _fails(capsys, ["report", "--results", str(other), "--tasks", "sst2"], "no records of task(s) sst2", "rte")


# --- the browser test -----------------------------------------------------------------------------------------------


def _chromium() -> str:
    """Debian's chromium, installed here when missing and possible; otherwise the test is skipped with the reason."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("chromium is not installed and cannot be installed here (needs apt-get as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"chromium could not be installed ({' '.join(cmd)}: {done.stderr.strip()[-300:]})")
    return shutil.which("chromium") or pytest.skip("apt-get installed chromium but it is not on PATH")


def _browse(chromium: str, tmp: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={tmp / 'profile'}", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-extensions", "--enable-logging=stderr", "--v=0",
        "--virtual-time-budget=5000", *args, url,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _page_requests(net_log: Path) -> list[str]:
    """URLs the page asked for (the browser's own update and account pings are not in the page's partition)."""
    events = json.loads(net_log.read_text())["events"]
    return sorted({
        e["params"]["url"] for e in events
        if "url" in e.get("params", {}) and "file://" in str(e["params"].get("network_isolation_key", ""))
    })  # fmt: skip


@pytest.mark.slow
def test_report_page_opens_clean_in_headless_chromium(tiny_model_dir, tmp_path, capsys):
    chromium = _chromium()
    results, out = tmp_path / "results", tmp_path / "report"
    sets = [s for s in FAST if not s.startswith("max_steps")] + ["max_steps=12", "eval_every=3"]
    argv = ["sweep", "--tasks", "sst2", "--methods", "lora,adalora,dora", "--budgets", "2K", "--seeds", "0,1",
            "--model", str(tiny_model_dir), "--executor", "inline", "--results", str(results), "--quiet",
            "--no-leaderboard"]  # fmt: skip
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["report", "--results", str(results), "--tasks", "sst2", "--out", str(out), "--resamples", "200"]) == 0
    printed = capsys.readouterr().out
    page = out / "index.html"
    assert f"report: {page.resolve()}" in printed
    text = page.read_text()
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", text), "the page links outside itself"

    check = out / "check.html"
    check.write_text(text.replace("<head>", "<head>" + CHECK_HEAD, 1).replace("</body>", CHECK_TAIL + "</body>", 1))
    net_log = tmp_path / "net.json"
    dom = _browse(chromium, tmp_path, check.as_uri(), f"--log-net-log={net_log}", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stdout[:500]
    seen = {k: html.unescape(v) for k, v in re.findall(r'data-([\w-]+)="([^"]*)"', body.group(1))}
    assert "images" in seen, f"the check script did not run: {body.group(0)[:300]}"
    assert int(seen["images"]) >= 4  # rank heatmap, schedule, training loss, Pareto
    assert json.loads(seen["bad-images"]) == []
    assert json.loads(seen["errors"]) == []
    assert json.loads(seen["foreign"]) == []
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    assert all(u.startswith("file:") for u in _page_requests(net_log)), _page_requests(net_log)
    for name in SECTIONS:
        assert f'data-section="{name}"' in dom.stdout, name
    for words in ("AdaLoRA vs LoRA", "DoRA vs LoRA", "Where the rank went", "uniform rank", "FLAGGED", "bytes"):
        assert words in dom.stdout, words

    shot = tmp_path / "report.png"
    height = min(int(seen["height"]) + 40, 16000)
    done = _browse(chromium, tmp_path, page.as_uri(), f"--window-size=1280,{height}", f"--screenshot={shot}")
    assert done.returncode == 0 and shot.stat().st_size > 50_000, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
