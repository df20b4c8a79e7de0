"""The leaderboard page end to end: a tiny real zoo → `pipeline.evaluate` → figures, index.html and README.md, checked
as files and, when Chromium is installed (CI installs it: `apt-get install -y chromium`), in a headless browser."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import PIL.Image
import pytest

import measures
from benchmark import pipeline
from benchmark.errors import UserError
from benchmark.evaluation import board as boards
from benchmark.evaluation.board import Board
from benchmark.report import figure_cache, layout, plots, summary
from benchmark.report import page as html
from measures import plugins
from tests.conftest import TINY, make_cfg

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
NAME = "smoke-digits"
MEASURES = {"params", "log_prod_of_fro", "dist_init_fro"}


class _Links(HTMLParser):
    """Every href/src and every id of a page."""

    def __init__(self):
        super().__init__()
        self.refs, self.ids, self.imgs, self.tables = [], set(), [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.ids.add(attrs.get("id"))
        self.refs += [attrs[k] for k in ("href", "src") if k in attrs]
        self.imgs += [attrs["src"]] if tag == "img" else []
        self.tables += tag == "table"


ORACLE_PLUGIN = textwrap.dedent('''
    import torch.nn.functional as F
    from measures import Context, measure

    @measure("test_page.test_loss", needs=("model", "test_data"), oracle=True, family="plugin", reference="a test")
    def test_loss(ctx: Context) -> float:
        """Cross-entropy on the test set (sees test data: an oracle analysis)."""
        return float(F.cross_entropy(ctx.model(ctx.x_test).detach(), ctx.y_test))
''')


@pytest.fixture(scope="module")
def board(tmp_path_factory, _tiny_zoo_store):
    """The session's tiny zoo (tests/conftest.py) evaluated once for this module, with one oracle analysis from
    a plugin: (leaderboard folder, results table, config)."""
    root = tmp_path_factory.mktemp("page")
    shutil.copytree(_tiny_zoo_store, root / "store")
    plugin = root / "oracle_plugin.py"
    plugin.write_text(ORACLE_PLUGIN)
    include = ",".join([*sorted(MEASURES), "test_page.test_loss"])
    cfg = make_cfg(*TINY, f"store.root={root / 'store'}", f"leaderboard.dir={root / 'lb'}",
                   f"measures.plugins=[{plugin}]", f"measures.include=[{include}]")
    assert pipeline.train(cfg)["trained"] == 0
    pipeline.measure(cfg)
    yield root / "lb", pipeline.evaluate(cfg), cfg
    measures.REGISTRY.remove("test_page.test_loss")
    plugins._LOADED.discard(str(plugin.resolve()))


def test_figures_are_valid_deterministic_pngs(board):
    folder, table, _ = board
    files = [folder / NAME / layout.SUMMARY_FIGURE, folder / NAME / layout.HEATMAP_FIGURE,
             folder / NAME / layout.COST_FIGURE]
    files += [folder / NAME / layout.scatter_file(m) for m in MEASURES]
    for path in files:
        with PIL.Image.open(path) as image:
            image.verify()
        with PIL.Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 100, path
    before = {p: p.read_bytes() for p in files}
    stored = boards.load(layout.BoardFiles(folder, NAME).typed)
    pd.testing.assert_frame_equal(stored.table, table)
    (folder / NAME / figure_cache.MANIFEST).unlink()  # draw every figure again, not reuse it
    assert len(plots.write(stored, folder / NAME).drawn) == len(list((folder / NAME).rglob("*.png")))
    assert {p: p.read_bytes() for p in files} == before  # same board, same bytes


def test_page_and_readme_reference_only_existing_files(board):
    folder, _, _ = board
    page = (folder / "index.html").read_text()
    links = _Links()
    links.feed(page)
    assert links.tables >= 5  # two ranked tables, ψ_i, sign error per axis, oracle analyses
    assert len(links.imgs) == 3 + len(MEASURES)  # τ/Ψ summary, cost against τ, ψ heatmap, the scatters
    for ref in links.refs:
        url = urlparse(ref)
        assert not url.scheme and not url.netloc, f"{ref}: the page must work offline"
        if url.path:
            assert (folder / unquote(url.path)).is_file(), ref
        if url.fragment:
            assert url.fragment in links.ids, ref
    assert "Gap vs. noise" in page and "Summary" in page
    oracle = page.split("Oracle analyses", 1)[1]
    assert "<code>test_page.test_loss</code> (oracle)" in oracle
    assert "test_page.test_loss" not in page.split("Oracle analyses", 1)[0]  # never ranked

    readme = (folder / "README.md").read_text()
    for ref in re.findall(r"\]\(([^)]+)\)", readme):
        assert (folder / unquote(ref.split("#")[0])).is_file(), ref
    assert summary.summary(html.stored_board(folder, NAME)) in readme
    written = {p: p.read_bytes() for p in (folder / "index.html", folder / "README.md")}
    html.write(folder)  # every board as stored: its typed form gives the page evaluate wrote from memory
    assert {p: p.read_bytes() for p in written} == written
    assert "**Best predictor of `gap_error`:**" in readme


def test_summary_answers_the_three_questions():
    rows = []
    for m, tau, lo, hi, psi_a, psi_b, tied, p in (("a", 0.8, 0.7, 0.9, 0.5, -0.4, True, 1.0),
                                                  ("b", 0.3, 0.1, 0.5, 0.2, 0.2, False, 0.001),
                                                  ("c", 0.2, -0.6, 0.9, 0.1, 0.0, True, 0.4)):
        rows.append({"measure": m, "target": "gap_error", "family": "f", "tau": tau, "tau_lo": lo, "tau_hi": hi,
                     "psi": 0.0, "psi_lo": -0.1, "psi_hi": 0.1, "psi.hp.model.width": psi_a,
                     "psi.hp.optimizer.lr": psi_b, "tied_with_best": tied, "tau_vs_best": tau - 0.8,
                     "tau_vs_best_lo": tau - 0.9, "tau_vs_best_hi": tau - 0.7, "tau_vs_best_p_holm": p})
    zoo = pd.DataFrame({"metric.converged": [True] * 4, "metric.gap_error": [0.1, 0.2, 0.3, 0.4],
                        "metric.test_error": [0.2] * 4, "metric.test_size": [100] * 4})
    text = summary.summary(Board("x", pd.DataFrame(rows), zoo))
    assert "`a` (f), τ = 0.80 [0.70, 0.90]" in text
    # c's interval overlaps a's, b's does not, but the group comes from the paired test: c is tied, b is not
    assert "cannot tell 1 of the other measures apart from it: `c`" in text
    assert "The runner-up, `b`: τ − τ_best = -0.50 [-0.60, -0.40], Holm-adjusted p = 0.001" in text
    untied = summary.summary(Board("x", pd.DataFrame(rows).assign(tied_with_best=[True, False, False]), zoo))
    assert "It leads beyond seed noise" in untied
    unreplicated = summary.summary(Board("x", pd.DataFrame(rows).assign(tied_with_best=None), zoo))
    assert "without seed replicates there is no paired test" in unreplicated
    assert "ψ = -0.40 along `optimizer.lr`" in text and "wrong way" in text
    assert "widest uncertainty is `c`'s τ interval [-0.60, 0.90]" in text
    assert "α = 0.05)" in text and "α = 0.01)" in summary.summary(Board("x", pd.DataFrame(rows), zoo, alpha=0.01))


def test_terminal_options_and_errors(board, capsys):
    folder, _, cfg = board
    text = pipeline.leaderboard(cfg)
    assert all(m in text for m in MEASURES)
    pick = make_cfg(*TINY, f"leaderboard.dir={folder}", "zoo=tiny", "dataset=mnist1d", "leaderboard.zoo=smoke",
                    "leaderboard.dataset=digits", "leaderboard.sort=measure", "leaderboard.order=desc",
                    "leaderboard.target=test_error")
    table, _, note = pipeline.leaderboard(pick).strip().partition("\n\n")
    lines = table.splitlines()[2:]  # past the title and the column names
    assert "The robust sign error is undefined" in note  # 4 unreplicated models: no usable environment
    assert [line.split()[2] for line in lines] == sorted(MEASURES, reverse=True)  # after "#" and "tier"
    for override, message in (("leaderboard.dataset=nope", "available: smoke-digits"),
                              ("leaderboard.target=nope", "valid: gap_error, shift_gap, test_error"),
                              ("leaderboard.sort=nope", "valid: measure, target"),
                              ("leaderboard.order=nope", "valid: auto, asc, desc")):
        with pytest.raises(UserError, match=message):
            pipeline.leaderboard(make_cfg(*TINY, f"leaderboard.dir={folder}", override))


# Injected into a copy of the page: records script errors, then after load every image's natural size and the
# result of clicking the "measure" header of the first ranked table (it should sort the rows Z→A).
_PROBE_HEAD = '<script>window.__errors=[];addEventListener("error",e=>__errors.push(String(e.message)));</script>'
_PROBE_BODY = """<script>addEventListener("load", () => {
  const th = document.querySelector("table.sortable th:nth-child(3)"); th.click();
  const names = Array.from(th.closest("table").tBodies[0].rows, r => r.cells[2].textContent);
  const pre = document.createElement("pre"); pre.id = "probe";
  pre.textContent = JSON.stringify({errors: window.__errors, names,
    images: Array.from(document.images, i => ({src: i.getAttribute("src"), complete: i.complete, w: i.naturalWidth}))});
  document.body.appendChild(pre);
});</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install -y chromium)")
def test_page_renders_in_headless_chromium(board, tmp_path):
    folder, _, _ = board
    page = (folder / "index.html").read_text()
    probe = folder / "index.probe.html"  # next to index.html, so the relative links resolve the same way
    probe.write_text(page.replace("<head>", "<head>" + _PROBE_HEAD, 1).replace("</body>", _PROBE_BODY + "</body>"))
    try:
        out = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
            capture_output=True, text=True, timeout=90)
    finally:
        probe.unlink()
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert match, f"the page did not finish loading:\n{dom[:2000]}\n{out.stderr[-2000:]}"
    report = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                        .replace("&gt;", ">"))
    assert report["errors"] == []
    assert report["names"] == sorted(MEASURES, reverse=True)
    assert len(report["images"]) == 3 + len(MEASURES)
    for image in report["images"]:
        assert image["complete"] and image["w"] > 0, image
    assert dom.count('<table class="sortable') >= 4 and f'id="{NAME}"' in dom
    for m in MEASURES:
        assert f"<code>{m}</code>" in dom
