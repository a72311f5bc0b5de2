"""Tests of the report (jaxtune.report, jaxtune.plots, ``jaxtune report --out``).

Stores are built directly (tests/report_stores.py), except one tiny real study.
Every figure must be written and not blank; the HTML must parse, embed every
figure and reference nothing outside itself; the store must be left
byte-identical; where Debian's chromium is installed, the page is rendered to a
screenshot that must not be blank.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import report_stores

from jaxtune import cli
from jaxtune.analysis import load_study
from jaxtune.report import study_summary, write_report
from jaxtune.store import Store

FIGURES = ["status", "best_so_far", "learning_curves", "importance", "hyperparameters",
           "partial_dependence", "parallel_coordinates", "isolation", "seed_variance"]
PNG = b"\x89PNG\r\n\x1a\n"


def assert_not_blank(png: bytes, what: str) -> None:
    """The image has structure: grey levels vary, and more than 1% of it is drawn on."""
    assert png.startswith(PNG), what
    img = matplotlib.image.imread(io.BytesIO(png), format="png")
    gray = img[..., :3].mean(axis=2)
    assert gray.std() > 0.05, f"{what}: pixel variance {gray.var():.2g}"
    assert (gray < 0.9).mean() > 0.01, f"{what}: almost nothing drawn"


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])


def parse_page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    page.close()
    return page


def snapshot(path: Path) -> dict:
    """Bytes and mtime of a store and of its write-ahead log, if it has one."""
    out = {}
    for p in (path, Path(f"{path}-wal")):
        if p.exists():
            out[p.name] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


def assert_unchanged(path: Path, before: dict) -> None:
    """The store and its log are as they were. SQLite may leave an *empty* log beside a
    closed WAL store that was read (a read-only connection cannot remove it)."""
    after = snapshot(path)
    for name in after.keys() - before.keys():
        assert name.endswith("-wal") and (path.parent / name).stat().st_size == 0
    assert {k: after[k] for k in before} == before


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """A finished synthetic study with pruned trials, and its report."""
    tmp = tmp_path_factory.mktemp("report")
    db = tmp / "runs.db"
    report_stores.build(db, n=64, pruned=4).close()
    before = snapshot(db)
    summary = write_report(db, tmp / "out", k=8)
    assert_unchanged(db, before)
    return db, tmp / "out", summary


# --------------------------------------------------------------------------- figures and files


def test_every_figure_is_written_and_not_blank(full):
    _, out, summary = full
    (study,) = summary["studies"]
    assert study["figure_notes"] == {}
    assert list(study["figures"]) == FIGURES
    for key in FIGURES:
        path = out / study["figures"][key]
        assert path == out / "figures" / "default" / f"{key}.png"
        assert_not_blank(path.read_bytes(), key)
    assert {"index.html", "report.md", "summary.json", "figures"} <= set(os.listdir(out))


def test_html_parses_embeds_every_figure_and_stands_alone(full):
    _, out, _ = full
    page = parse_page(out / "index.html")
    assert page.tags[:2] == ["html", "head"] and "table" in page.tags
    assert len(page.images) == len(FIGURES)
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert_not_blank(base64.b64decode(src.split(",", 1)[1]), src[:40])
    assert page.links == []  # no stylesheet, script or image outside the page
    text = (out / "index.html").read_text()
    for heading in ("Top 8 trials", "Importance", "Figures", "Settings", "Environment"):
        assert heading in text
    assert json.loads((out / "summary.json").read_text())["studies"][0]["name"] == "default"


def test_markdown_references_existing_figures(full):
    _, out, _ = full
    md = (out / "report.md").read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(refs) == len(FIGURES)
    assert all((out / ref).is_file() for ref in refs)
    assert md.startswith("# jaxtune report: ")


def test_summary_content(full):
    db, _, summary = full
    (s,) = summary["studies"]
    data = load_study(db)
    ranked = data.ranked()
    assert s["best"]["trial"] == ranked[0].index and s["best"]["final_seeds"] == 3
    assert [r["trial"] for r in s["top"]] == [t.index for t in ranked[:8]]
    assert all(r["command"] is None for r in s["top"])  # made in Python, not by the command
    assert (s["trials"], s["pruned"], s["running"]) == (68, 4, 0)
    assert s["complete"] + s["diverged"] == 64
    assert s["pruned_steps"] == {"count": 4, "steps": {"min": 10.0, "median": 10.0,
                                                       "max": 10.0}, "rungs": {"0": 4}}
    assert [(h["name"], h["edge"]) for h in s["boundary_hits"]] == [("lr", "high")]
    assert any("high edge of lr" in w and "widen" in w for w in s["warnings"])
    assert set(s["importance"]["main"]) == set(report_stores.SPACE.names)
    assert s["importance"]["n_trials"] == s["complete"]
    assert s["environment"]["devices"] == "not recorded in this store"
    assert s["settings"]["searcher"] == "random" and s["variance"]["top_k"] == 3
    json.dumps(summary)  # plain JSON all the way down


def test_many_diverged_trials_are_warned_about_with_the_cause(tmp_path):
    with report_stores.build(tmp_path / "runs.db", n=48, diverge_above=3e-3) as store:
        data = load_study(store)
    summary = study_summary(data)
    (warning,) = [w for w in summary["warnings"] if "diverged" in w]
    assert f"{summary['diverged']} of 48 finished trials" in warning
    assert "high lr" in warning and "narrow its range" in warning


def test_best_within_seed_noise_of_the_runner_up_is_warned_about(tmp_path):
    path = tmp_path / "runs.db"
    with report_stores.build(path, n=16) as store:
        sid = store.study("default")["id"]
        trials = store.trials(sid)
        best = max((t for t in trials if t.status == "complete"), key=lambda t: t.objective)
        twin = next(t for t in trials if t.status == "complete" and t.index != best.index)
        twin.objective = best.objective - 1e-4  # seed std of both is about 0.01
        twin.metrics["val_accuracy"] = {**best.metrics["val_accuracy"], "mean": twin.objective}
        store.update_trials(sid, [twin])
    summary = study_summary(load_study(path))
    noise = summary["seed_noise"]["search"]
    assert noise["trials"] == [best.index, twin.index] and noise["within_noise"]
    assert any("within seed noise of the runner-up" in w for w in summary["warnings"])


# --------------------------------------------------------------------------- the command


def test_report_of_an_interrupted_store_leaves_it_byte_identical(tmp_path, capsys):
    db = tmp_path / "runs.db"
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(here), str(here.parent), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, str(here / "report_stores.py"), str(db)], env=env,
                   check=True, timeout=120)
    assert Path(f"{db}-wal").exists()  # killed without closing: the log is still there
    before = snapshot(db)
    code = cli.main(["report", str(db), "--out", str(tmp_path / "out"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert_unchanged(db, before)
    summary = json.loads(out.strip().splitlines()[-1])
    (s,) = summary["studies"]
    assert (s["trials"], s["running"], s["complete"] + s["diverged"]) == (48, 8, 40)
    assert "interrupted" in s["warnings"][0] and "jaxtune resume" in s["warnings"][0]
    assert any("no final re-evaluation" in w for w in s["warnings"])
    assert s["figure_notes"] == {"seed_variance": "study 'default' has no re-evaluation of its "
                                 "top trials with several seeds"}
    assert "warning: the study was interrupted" in out
    page = parse_page(tmp_path / "out" / "index.html")
    assert len(page.images) == len(FIGURES) - 1


def test_report_of_several_studies(tmp_path, capsys):
    db = tmp_path / "runs.db"
    report_stores.build(db, name="a", n=24).close()
    report_stores.build(db, name="b/2", n=12, seed=1).close()
    assert cli.main(["report", str(db), "--out", str(tmp_path / "all")]) == 0
    out = capsys.readouterr().out
    assert "study 'a'" in out and "study 'b/2'" in out
    text = (tmp_path / "all" / "index.html").read_text()
    assert "Study <code>a</code>" in text and "Study <code>b/2</code>" in text
    assert (tmp_path / "all" / "figures" / "a" / "status.png").is_file()
    assert (tmp_path / "all" / "figures" / "b_2" / "status.png").is_file()
    assert cli.main(["report", str(db), "--out", str(tmp_path / "b"), "--name", "b/2",
                     "--json", "-k", "3"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [s["name"] for s in summary["studies"]] == ["b/2"]
    assert len(summary["studies"][0]["top"]) == 3
    # without --out the command still asks which study to print
    assert cli.main(["report", str(db)]) == 2
    assert "several studies" in capsys.readouterr().err


def test_report_of_tiny_and_empty_studies(tmp_path, capsys):
    db = tmp_path / "runs.db"
    report_stores.build(db, name="tiny", n=4, finals=False).close()
    with Store(db) as store:
        store.open_study("empty", {"steps": 20})
    assert cli.main(["report", str(db), "--out", str(tmp_path / "out"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tiny, empty = summary["studies"]
    assert tiny["importance"] is None and "at least 8" in tiny["importance_note"]
    assert tiny["figures"]["status"] and tiny["figures"]["importance"] is None
    assert empty["best"] is None and empty["trials"] == 0
    assert all(v is None for v in empty["figures"].values())
    page = parse_page(tmp_path / "out" / "index.html")
    assert len(page.images) == sum(v is not None for s in summary["studies"]
                                   for v in s["figures"].values())


def test_report_of_a_real_study(tmp_path, capsys):
    import jaxtune as jt

    db = tmp_path / "runs.db"
    study = jt.Study(jt.zoo.digits_logistic(steps=20, eval_every=10), searcher="random",
                     store=str(db), population=8, seeds=2, top_k=2, final_seeds=2,
                     verbose=False, progress=False)
    result = study.run(trials=16)
    study.store.close()
    assert cli.main(["report", str(db), "--out", str(tmp_path / "out"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (s,) = summary["studies"]
    assert s["best"]["trial"] == result.best["trial"]
    assert s["best"]["test_accuracy"] == pytest.approx(result.best["test_accuracy"])
    assert s["complete"] == result.n_complete and s["environment"]["jaxtune_version"]
    for key, path in s["figures"].items():
        if path is not None:
            assert_not_blank((tmp_path / "out" / path).read_bytes(), key)
    assert s["figures"]["learning_curves"] and s["figures"]["seed_variance"]


def test_import_jaxtune_stays_light():
    code = ("import sys, jaxtune, jaxtune.analysis, jaxtune.report; "
            "print([m for m in ('matplotlib', 'pandas', 'sklearn') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- a browser


def test_index_html_renders_in_headless_chromium(full, tmp_path):
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    _, out, _ = full
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1280,2400", f"--screenshot={shot}", (out / "index.html").as_uri()],
        capture_output=True, text=True, timeout=180)
    assert shot.exists(), proc.stderr[-2000:]
    assert_not_blank(shot.read_bytes(), "screenshot")
    img = matplotlib.image.imread(shot)
    assert img.shape[:2] == (2400, 1280)
    # the figures are drawn on the page: the upper part has the coloured bars of the plots
    blue = np.abs(img[..., :3] - np.array([0x4C, 0x72, 0xB0]) / 255).sum(axis=2) < 0.1
    assert blue.mean() > 0.001
