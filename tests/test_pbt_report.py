"""Reports of population-based training: lineages shown, importance on constant configs."""

from __future__ import annotations

import json
import sqlite3

import report_stores

from jaxtune import analysis, report, surrogate


def test_report_shows_lineages_and_importance_leaves_them_out(tmp_path):
    db = tmp_path / "runs.db"
    report_stores.build(db, n=24).close()
    data = analysis.load_study(str(db))
    top = [t.index for t in data.ranked()[:2]]
    with sqlite3.connect(db) as conn:  # as PBT stores an exploited trial's history
        for t in top:
            (curves,) = conn.execute("SELECT curves FROM trials WHERE idx = ?", (t,)).fetchone()
            curves = json.loads(curves)
            curves["segments"] = [
                {"start": 0, "end": 10, "config": {"lr": 0.01}, "source": None},
                {"start": 10, "config": {"lr": 0.02}, "source": 7}]
            conn.execute("UPDATE trials SET curves = ? WHERE idx = ?", (json.dumps(curves), t))
    data = analysis.load_study(str(db))
    summary = report.study_summary(data)
    assert sorted(summary["lineages"]) == sorted(top)
    fitted = surrogate.fit_surrogate(data)
    complete = [t.index for t in data.ranked()]
    assert sorted(fitted.trials) == sorted(set(complete) - set(top))
    text = "\n".join(str(b) for b in report._study_blocks(data, summary, [], k=10))
    assert f"trial {top[0]}: 0-10" in text and "(from trial 7)" in text
