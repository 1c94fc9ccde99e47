"""The HTML report in a real headless browser (Debian's chromium): every image loads, no table is wider
than the page at 1400 px, the contents link to sections that exist. Skipped when chromium is absent."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnbench.cli import main
from helpers import write_records

from _report_records import colorization_records, memory_records, speed_records

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium on PATH (apt-get install chromium)")

#: runs in the page once everything has loaded and writes what it found into the DOM for --dump-dom
_PROBE = """<script>
window.addEventListener('load', () => {
  const width = document.documentElement.clientWidth;
  const images = [...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0,
                                                 control: i.classList.contains('control')}));
  const tables = [...document.querySelectorAll('table')].map(t => ({right: t.getBoundingClientRect().right,
                                                                   control: t.classList.contains('control')}));
  const anchors = [...document.querySelectorAll('nav a')].map(a => a.getAttribute('href'))
                    .map(h => ({href: h, found: !!document.getElementById(h.slice(1))}));
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({width, scroll: document.documentElement.scrollWidth, images, tables, anchors});
  document.body.appendChild(out);
});
</script>"""
#: a broken image and a table that cannot wrap: the probe must flag both, or it checks nothing
_CONTROLS = ("<img class='control' alt='broken' src='data:image/png;base64,AAAA'>"
             "<div style='width:0;overflow:visible'><table class='control'><tr><td style='white-space:nowrap'>"
             + "x" * 400 + "</td></tr></table></div>")


def _write(records: list[dict], folder: Path) -> None:
    for rec in records:
        write_records([rec], folder / f"{rec['suite']}-ci.jsonl")


def _probe(page: Path, tmp_path: Path) -> dict:
    html = page.read_text(encoding="utf-8")
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", _CONTROLS + _PROBE + "</body>"), encoding="utf-8")
    result = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1400,1000", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert match, f"the probe did not run: {result.stderr[-500:]}"
    return json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


def test_report_renders_every_image_and_fits_the_page(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _write(memory_records() + speed_records(sizes=(32, 64, 128)) + colorization_records(), runs)
    examples = runs / "colorization-ci.examples"
    examples.mkdir()
    rng = np.random.default_rng(0)
    for name in ("target", "psal-3", "full"):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(examples / f"{name}-256.png")
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out), "--format", "html", "--budget", "4GiB"]) == 0
    found = _probe(out / "report.html", tmp_path)

    page_images = [i for i in found["images"] if not i["control"]]
    assert len(page_images) >= 8  # headline, memory/flops/time plots, quality, three examples
    assert [i["alt"] for i in page_images if not i["ok"]] == []
    assert any("target" in i["alt"] for i in page_images)
    assert [i for i in found["images"] if i["control"] and i["ok"]] == []  # the broken control is seen as broken

    assert found["width"] <= 1400
    wide = [t for t in found["tables"] if not t["control"] and t["right"] > found["width"]]
    assert wide == []
    assert any(t["control"] and t["right"] > found["width"] for t in found["tables"])  # the probe sees overflow

    assert found["anchors"] and all(a["found"] for a in found["anchors"])
    assert [a["href"] for a in found["anchors"]][:3] == ["#summary", "#suite-memory", "#suite-speed"]
