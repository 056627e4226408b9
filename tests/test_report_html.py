"""The HTML report and the published site: self-contained, escaped, relative links only, charts and galleries present."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from report_fixtures import XSS, make_mini_run, make_real_run

from flowopd.benchmarks.charts import line_chart, nice_ticks, radar_chart
from flowopd.benchmarks.html_report import CSP, curves_html, gallery_html, render_report
from flowopd.benchmarks.publish import publish
from flowopd.benchmarks.report import SHIPPED_BASELINES, build_report, load_run, name_runs
from flowopd.errors import FlowOPDError


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> Tags:
    p = Tags()
    p.feed(html)
    return p


def links(tags: Tags) -> list[str]:
    return [a[k] for _, a in tags.tags for k in ("href", "src", "xlink:href", "action") if a.get(k) is not None]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [
        make_mini_run(root, "eval-student", "mini-student", 0.8),
        make_mini_run(root, "eval-base", "mini-base", 0.3, shift=1, train_log=False),
        make_real_run(
            root,
            "eval-sd",
            "sd3.5-m <opd>",
            {"geneval/overall": 0.9, "ocr/accuracy": 0.9, "deqa/deqa": 4.3, "pickscore/pickscore": 22.9, "t2i-compbench/color": 0.81},
            skipped={"hpsv2": "prompt set 'hpsv2/anime' not at /x; run `flowopd prompts download hpsv2`"},
        ),
    ]


@pytest.fixture(scope="module")
def report_html(runs) -> str:
    return render_report(build_report(runs, SHIPPED_BASELINES / "flow-opd-paper.csv", baseline_run=runs[1]))


def test_html_is_self_contained_and_escapes_every_string(report_html):
    tags = parse(report_html)
    names = [t for t, _ in tags.tags]
    assert "script" not in names and "iframe" not in names and "link" not in names
    csp = [a for t, a in tags.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and csp[0]["content"] == CSP and "script" not in CSP
    for url in links(tags):
        assert url.startswith("data:image/"), url[:60]  # a single report links to nothing
    assert not re.search(r"url\(|@import|https?://|//[a-z]", re.sub(r'src="data:[^"]*"', "", report_html))
    # the prompt <script>..., the label "sd3.5-m <opd>" and the skip reason appear as text, never as markup
    assert XSS not in report_html and "<b>cube</b>" not in report_html and "<opd>" not in report_html
    assert (
        "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt; a red &lt;b&gt;cube&lt;/b&gt; &amp; &quot;quotes&quot;"
        in report_html
    )
    text = "".join(tags.text)
    assert XSS in text and "sd3.5-m <opd>" in text and "run `flowopd prompts download hpsv2`" in text


def test_paired_changes_are_green_for_a_clear_gain_and_red_for_a_clear_loss(runs):
    gains = render_report(build_report(runs[:2], baseline_run=runs[1])).split('id="deltas"')[1].split("</section>")[0]
    assert 'class="up"' in gains and 'class="down"' not in gains
    assert "<td>mini-student</td>" in gains and "<td>mini-base</td>" not in gains  # the baseline gets no row of zeros
    losses = render_report(build_report(runs[:2], baseline_run=runs[0])).split('id="deltas"')[1].split("</section>")[0]
    assert 'class="down"' in losses and 'class="up"' not in losses


def test_html_has_tables_marks_charts_and_galleries(report_html):
    tags = parse(report_html)
    classes = [a.get("class", "") for _, a in tags.tags]
    assert any("best" in c.split() for c in classes) and any("second" in c.split() for c in classes)
    assert "td.best{background:#e1ecff}" in report_html.replace("tr td.best", "td.best")  # blue best, green second
    for section in (
        "main",
        "main-mini",
        "per-tag-mini",
        "t2i-compbench",
        "mini-rewards",
        "radar",
        "deltas",
        "galleries",
        "curves",
        "skipped",
        "provenance",
    ):
        assert f'id="{section}"' in report_html, section
    assert report_html.count('class="chart radar"') == 2  # the paper's four metrics and the mini world's four
    assert "polyline" in report_html and "reward (mini-student)" in report_html and "kl (mini-student)" in report_html
    imgs = [a for t, a in tags.tags if t == "img"]
    assert imgs and all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    assert all("px" in a.get("class", "") for a in imgs)  # 32 and 64 px images: shown enlarged with hard edges
    assert "image-rendering:pixelated" in report_html
    assert "0.7166" in report_html and "prints Avg 0.7166" in report_html


def test_gallery_sets_models_side_by_side(runs):
    mini = [load_run(runs[0]), load_run(runs[1])]
    name_runs(mini)
    html = gallery_html(mini, per_suite=4)
    rows = html.split('class="gal-row"')[1:]
    assert len(rows) == 4
    tasks = [re.search(r'<span class="tag">(\w+)</span>', r).group(1) for r in rows]
    assert set(tasks) == {"compose", "text", "preference", "quality"}  # spread over the tasks
    assert all(r.count("<img") == 2 and "mini-student" in r and "mini-base" in r for r in rows)


def test_images_outside_the_run_are_never_embedded(tmp_path):
    run_dir = make_mini_run(tmp_path, "r", "m", 0.5, train_log=False)
    recs = [json.loads(x) for x in (run_dir / "mini" / "samples.jsonl").read_text().splitlines()]
    secret = tmp_path / "secret.png"
    (run_dir / recs[0]["image"]).rename(secret)
    recs[0]["image"] = "../secret.png"
    recs[1]["image"] = str(secret)
    (run_dir / "mini" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    run = load_run(run_dir)
    name_runs([run])
    html = gallery_html([run], per_suite=6)
    assert html.count("image missing") == 2 and html.count("<img") == 4


def test_training_curves_skip_non_numeric(runs):
    run = load_run(runs[0])
    name_runs([run])
    html = curves_html(run)
    assert "12 steps" in html and html.count("<svg") == 3  # reward, loss, kl
    assert "time_step" not in html and ">note<" not in html
    assert "kl/compose" in html and "reward/mini_quality" in html and "mar" in html


def test_charts_are_pure_svg():
    svg = line_chart({"a": [(1, 0.5), (2, float("nan")), (3, 0.7)], "<b>": [(1, 1.0)]}, title="t & u")
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "polyline" in svg and "circle" in svg
    assert "&lt;b&gt;" in svg and "t &amp; u" in svg and "nan" not in svg.lower()
    assert line_chart({"a": [(1, float("inf"))]}) == ""
    r = radar_chart(["x", "y", "z"], {"full": [0.2, 0.5, 1.4], "partial": [0.1, None, 0.3]})
    assert r.count("<polygon") == 4 + 1  # four rings, one series (the partial one is left out)
    assert radar_chart(["x", "y"], {"a": [1, 1]}) == ""
    assert nice_ticks(0.0, 1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]


def _check_relative_links(site: Path) -> int:
    checked = 0
    for page in site.rglob("*.html"):
        for url in links(parse(page.read_text())):
            if url.startswith("data:image/"):
                continue
            assert not re.match(r"^[a-z][a-z0-9+.-]*:|^/|^//", url), f"{page}: {url} is not relative"
            target = (page.parent / url.split("#")[0]).resolve()
            assert target.is_file() and site.resolve() in target.parents, f"{page}: {url} does not exist"
            checked += 1
    return checked


def test_publish_writes_a_site_with_working_relative_links(runs, tmp_path, run_cli):
    site = tmp_path / "site"
    res = run_cli("publish", *map(str, runs), "--out", str(site), "--baselines", "flow-opd-paper")
    assert res.returncode == 0, res.stderr
    slugs = ["mini-student", "mini-base", "sd3.5-m-opd"]
    for s in slugs:
        assert (site / "models" / f"{s}.html").is_file()
        doc = yaml.safe_load((site / "model-index" / f"{s}.yaml").read_text())
        assert len(doc["model-index"]) == 1
    assert _check_relative_links(site) >= 3 * 4 + 3  # index -> models, results, yaml; each model -> index, yaml, results
    index = (site / "index.html").read_text()
    assert 'href="models/sd3.5-m-opd.html"' in index and "sd3.5-m &lt;opd&gt;" in index
    results = json.loads((site / "results.json").read_text())
    assert [m["id"] for m in results["models"] if m["measured"]] == slugs
    page = (site / "models" / "mini-student.html").read_text()
    assert 'id="all-metrics"' in page and 'id="curves"' in page and 'id="galleries"' in page and 'href="../index.html"' in page
    assert "mini-base" not in page.split('id="galleries"')[1]  # only its own images
    mi = yaml.safe_load((site / "model-index" / "sd3.5-m-opd.yaml").read_text())["model-index"][0]
    assert mi["name"] == "sd3.5-m <opd>"
    # publishing again replaces the site whole; a folder of someone else's files is refused
    lb = build_report(runs[:1])
    publish(lb, site)
    assert not (site / "models" / "mini-base.html").exists() and (site / "models" / "mini-student.html").is_file()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FlowOPDError, match="holds other files"):
        publish(lb, other)
    assert (other / "notes.txt").read_text() == "keep me"
