"""Tests of the ``jaxtune`` command (jaxtune.cli): run, resume, report, list and errors.

Most calls go through ``jaxtune.cli.main(argv)`` in-process. The experiment file
they load keeps its Experiment in a private ``sys.modules`` entry, so every
in-process run reuses one compiled bucket program (``zoo.load`` re-executes
the file at each call). One test runs the installed console script for real.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from jaxtune import cli, zoo
from jaxtune.store import Store

CACHE_MODULE = "_jaxtune_test_cli_cache"

EXPERIMENT_BODY = """
import jaxtune as jt


def build(steps):
    return jt.Experiment(
        data=jt.data.digits(), model=jt.models.Logistic(),
        space=jt.Space(lr=jt.Real(1e-2, 1.0, log=True),
                       schedule=jt.Choice(["constant", "cosine"])),
        steps=steps, eval_every=10, defaults={"batch_size": 32, "optimizer": "sgd"},
        name="cli-digits")
"""

# make_experiment(**kwargs) receives --steps; the Experiment is cached per step count.
CACHED_FILE = EXPERIMENT_BODY + f"""

import sys
import types

_cache = sys.modules.setdefault({CACHE_MODULE!r}, types.ModuleType({CACHE_MODULE!r}))


def make_experiment(steps=20):
    experiments = _cache.__dict__.setdefault("experiments", {{}})
    if steps not in experiments:
        experiments[steps] = build(steps)
    return experiments[steps]
"""

# A plain file: `experiment` only (--steps goes through dataclasses.replace).
PLAIN_FILE = EXPERIMENT_BODY + """

experiment = build(40)
"""

# fifo: these tests count complete trials (the default asha prunes some; its own
# tests pass --scheduler asha)
FAST = ["--population", "4", "--steps", "20", "--no-progress", "--top-k", "1",
        "--final-seeds", "4", "--scheduler", "fifo"]


@pytest.fixture(scope="module")
def exp_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cli") / "tiny_digits.py"
    path.write_text(CACHED_FILE)
    yield str(path)
    sys.modules.pop(CACHE_MODULE, None)


@pytest.fixture(autouse=True)
def _keep_xla_flags(monkeypatch):
    """main() exports XLA_FLAGS for JAX; keep that from leaking into other tests.

    JAX is initialised first, so the flag cannot change this process's devices.
    """
    jax.devices()
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))


def run_main(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def json_line(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def snapshot(path: Path) -> tuple:
    return (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns,
            sorted(os.listdir(path.parent)))


def stored_trials(db, name: str = "default"):
    with Store(db, readonly=True) as s:
        return s.trials(s.study(name)["id"])


def assert_store_ok(db, n: int, name: str = "default") -> list:
    trials = stored_trials(db, name)
    assert [t.index for t in trials] == list(range(n))
    assert all(t.status == "complete" for t in trials)
    configs = [json.dumps(t.config, sort_keys=True) for t in trials]
    assert len(set(configs)) == n
    with Store(db, readonly=True) as s:
        assert s.integrity_check() == "ok"
    return trials


@pytest.fixture(scope="module")
def run_db(exp_file, tmp_path_factory) -> Path:
    """A store made by `jaxtune run` (8 random trials); tests must not modify it."""
    db = tmp_path_factory.mktemp("cli_store") / "runs.db"
    assert cli.main(["run", exp_file, "--searcher", "random", "--trials", "8", "--store",
                     str(db), "--quiet", *FAST]) == 0
    gc.collect()  # the study's store connection is closed (WAL checkpointed) by now
    return db


# --------------------------------------------------------------------------- list


def test_list_prints_the_built_in_experiments(capsys):
    code, out, err = run_main(capsys, ["list"])
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == len(zoo.EXPERIMENTS)
    for name, entry in zoo.EXPERIMENTS.items():
        (line,) = [ln for ln in lines if ln[2:].split()[0] == name]
        assert entry.objective in line
        assert line.startswith("*") == (name == zoo.DEFAULT)


# --------------------------------------------------------------------------- run


def test_member_step_budget_and_target_from_the_command_line(capsys, exp_file, tmp_path):
    # 20 steps per trial: 90 member-steps hold 4 trials; the target then stops nothing
    db = tmp_path / "budget.db"
    code, out, err = run_main(capsys, ["run", exp_file, "--searcher", "random", "--store", db,
                                       "--member-steps", 90, "--target", 1.01, "--json", *FAST])
    assert code == 0, err
    assert json_line(out)["trials"] == 4
    assert_store_ok(db, 4)
    with Store(db, readonly=True) as s:
        info = s.studies()[0]["info"]
    assert info["member_steps"] == 90 and info["target"] == 1.01
    # a reachable target stops once the first trials complete
    db2 = tmp_path / "target.db"
    code, out, err = run_main(capsys, ["run", exp_file, "--searcher", "random", "--store", db2,
                                       "--trials", 40, "--target", 0.0, "--json", *FAST])
    assert code == 0, err
    assert "target val_accuracy 0.0 reached" in err
    assert json_line(out)["trials"] == 4


@pytest.mark.parametrize(("searcher", "trials"), [("random", 8), ("quasirandom", 8),
                                                  ("bayes", 12)])
def test_run_prints_a_json_summary(capsys, exp_file, tmp_path, searcher, trials):
    db = tmp_path / "sub" / "runs.db"  # parent directories are created
    code, out, err = run_main(capsys, ["run", exp_file, "--searcher", searcher, "--trials",
                                       trials, "--store", db, "--json", *FAST])
    assert code == 0, err
    summary = json_line(out)
    assert {"trials", "best", "wall_s", "compiles"} <= set(summary)
    assert summary["trials"] == trials and summary["complete"] == trials
    assert summary["objective"] == "val_accuracy" and summary["direction"] == "maximize"
    best = summary["best"]
    assert set(best["config"]) == {"lr", "schedule"}
    assert 0.0 <= best["val_accuracy"] <= 1.0 and 0.0 <= best["test_accuracy"] <= 1.0
    assert best["final_seeds"] == 4
    assert isinstance(summary["wall_s"], float) and summary["wall_s"] >= 0
    # one program (4 members) serves the search and the final evaluation
    assert summary["compiles"] in (0, 1)
    assert summary["store"] == str(db)
    assert "rank" in out and "best trial" in out
    assert "jaxtune: round" in err  # progress lines go to stderr, not stdout
    trials_ = assert_store_ok(db, trials)
    ranked = sorted(trials_, key=lambda t: (-t.objective, t.index))
    assert best["trial"] == ranked[0].index and best["config"] == ranked[0].config
    with Store(db, readonly=True) as s:
        (study,) = s.studies()
    assert study["spec"]["searcher"] == searcher
    assert study["info"]["command"].startswith("jaxtune run ")
    assert study["info"]["trials"] == trials


def test_run_again_continues_and_other_steps_are_refused(capsys, exp_file, tmp_path):
    db = tmp_path / "runs.db"
    base = ["run", exp_file, "--searcher", "random", "--store", db, "--quiet", "--json", *FAST]
    assert run_main(capsys, [*base, "--trials", "4"])[0] == 0
    code, out, _ = run_main(capsys, [*base, "--trials", "8"])  # same spec: continues
    assert code == 0 and json_line(out)["trials"] == 8
    before = assert_store_ok(db, 8)
    code, out, err = run_main(capsys, ["run", exp_file, "--searcher", "random", "--store", db,
                                       "--trials", "12", "--steps", "10", "--no-progress"])
    assert code == 2 and out == ""
    (line,) = error_lines(err)
    assert line.startswith("jaxtune: error:") and "different spec" in line
    assert stored_trials(db) == before


def test_grid_searcher_on_a_real_space_is_a_clear_error(capsys, exp_file, tmp_path):
    db = tmp_path / "runs.db"
    code, out, err = run_main(capsys, ["run", exp_file, "--searcher", "grid", "--trials", "4",
                                       "--store", db, *FAST])
    assert code == 2 and out == ""
    (line,) = error_lines(err)
    assert line.startswith("jaxtune: error:") and "grid" in line and "'lr'" in line
    assert "--resolution" in line
    assert not db.exists()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "no-such-experiment"], "unknown experiment"),
    (["run", "{tmp}/missing.py"], "does not exist"),
    (["run", "{exp}", "--seeds", "5", "--population", "4"], "seeds"),
    (["run", "{exp}", "--seeds", "2", "--population", "3"], "population 3 is not a multiple "
                                                            "of seeds 2"),
    (["run", "{tmp}/not_an_experiment.py"], "neither `experiment`"),
    (["report", "{tmp}/missing.db"], "does not exist"),
    (["resume", "{tmp}/missing.db"], "does not exist"),
])
def test_user_errors_exit_2_with_one_line(capsys, exp_file, tmp_path, argv, message):
    (tmp_path / "not_an_experiment.py").write_text("x = 1\n")
    db = tmp_path / "runs.db"
    argv = [a.format(tmp=tmp_path, exp=exp_file) for a in argv]
    if argv[0] == "run":
        argv += ["--store", str(db), "--trials", "4"]
    code, out, err = run_main(capsys, argv)
    assert code == 2 and out == ""
    (line,) = error_lines(err)
    assert line.startswith("jaxtune: error:") and message in line
    assert not db.exists()


@pytest.mark.parametrize(("flag", "value"), [
    ("--trials", "0"), ("--trials", "abc"), ("--trials", "-3"), ("--population", "0"),
    ("--steps", "1.5"), ("--time-budget", "0"), ("--searcher", "annealing"),
    ("--surrogate", "GBRT"), ("--memory-limit", "lots"), ("--member-steps", "0")])
def test_bad_flag_values_exit_2(capsys, exp_file, tmp_path, flag, value):
    db = tmp_path / "runs.db"
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", exp_file, "--store", str(db), flag, value])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and flag in errors[0] and repr(value).strip("'") in errors[0]
    assert not db.exists()


def test_population_above_the_memory_limit_is_refused_before_compiling(capsys, exp_file,
                                                                        tmp_path):
    db = tmp_path / "runs.db"
    code, out, err = run_main(capsys, ["run", exp_file, "--store", db, "--memory-limit", "1KB",
                                       "--trials", 4, *FAST])
    assert code == 2 and out == ""
    (line,) = error_lines(err)
    assert line.startswith("jaxtune: error:") and "memory limit" in line and "GiB" in line
    assert stored_trials(db) == []  # nothing trained, nothing stored


def test_resume_bad_trials_flag_exits_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main(["resume", str(tmp_path / "runs.db"), "--trials", "zero"])
    assert exc.value.code == 2
    assert "--trials" in capsys.readouterr().err


def test_negative_top_k_flag_is_refused():
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["run", "x.py", "--top-k", "-1"])


def test_store_under_a_regular_file_is_an_error(capsys, exp_file, tmp_path):
    blocker = tmp_path / "plain.txt"
    blocker.write_text("not a directory\n")
    before = snapshot(blocker)
    code, out, err = run_main(capsys, ["run", exp_file, "--store", blocker / "runs.db",
                                       "--trials", "4", *FAST])
    assert code == 2 and out == ""
    (line,) = error_lines(err)
    assert line.startswith("jaxtune: error:") and "plain.txt" in line
    assert snapshot(blocker) == before


def _foreign_text(path: Path) -> None:
    path.write_text("these are my notes\n" * 10)


def _foreign_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
        conn.execute("INSERT INTO accounts (owner) VALUES ('alice')")
    conn.close()


@pytest.mark.parametrize("make", [_foreign_text, _foreign_sqlite], ids=["text", "sqlite"])
@pytest.mark.parametrize("command", ["run", "resume", "report"])
def test_foreign_file_as_store_is_refused_and_unchanged(capsys, exp_file, tmp_path, make,
                                                        command):
    foreign = tmp_path / "foreign.db"
    make(foreign)
    before = snapshot(foreign)
    argv = (["run", exp_file, "--store", foreign, "--trials", "4", *FAST] if command == "run"
            else [command, foreign])
    code, out, err = run_main(capsys, argv)
    assert code == 2 and out == ""
    (line,) = error_lines(err)
    assert line.startswith("jaxtune: error:") and "not a jaxtune store" in line
    assert snapshot(foreign) == before  # same bytes, same mtime, no -wal/-shm files


# --------------------------------------------------------------------------- report


def test_report_prints_the_table(capsys, run_db):
    before = snapshot(run_db)
    code, out, err = run_main(capsys, ["report", run_db])
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("study 'default': experiment cli-digits, searcher random, "
                               "8 trials (8 complete) in 4 rounds")
    header = lines[1].split()
    assert header[:3] == ["rank", "trial", "val_accuracy"]
    rows = lines[2:]
    assert len(rows) == 8
    trials = {t.index: t for t in stored_trials(run_db)}
    objectives = []
    for rank, row in enumerate(rows, 1):
        fields = row.split()
        assert int(fields[0]) == rank
        t = trials[int(fields[1])]
        assert float(fields[2]) == pytest.approx(t.objective, abs=1e-4)
        objectives.append(float(fields[2]))
    assert objectives == sorted(objectives, reverse=True)

    code, out, _ = run_main(capsys, ["report", run_db, "-k", "3", "--json"])
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2 + 3 + 1
    summary = json.loads(lines[-1])
    assert summary["trials"] == 8 and summary["best"]["test_accuracy"] is not None
    assert summary["best"]["trial"] == int(lines[2].split()[1])
    assert snapshot(run_db)[0] == before[0]  # reading changes nothing


def test_report_of_several_studies_needs_a_name(capsys, tmp_path):
    db = tmp_path / "runs.db"
    spec = {"experiment": {"name": "handmade"}, "searcher": "random",
            "objective": "val_loss", "direction": "minimize"}
    with Store(db) as s:
        s.open_study("a", spec)
        s.open_study("b", spec)
    code, out, err = run_main(capsys, ["report", db])
    assert code == 2 and out == ""
    (line,) = error_lines(err)
    assert "several studies" in line and "--name" in line
    code, out, err = run_main(capsys, ["report", db, "--name", "b"])
    assert code == 0 and out.startswith("study 'b': experiment handmade")
    code, out, err = run_main(capsys, ["report", db, "--name", "c"])
    assert code == 2 and "no study named 'c'" in err


def test_report_of_an_empty_store(capsys, tmp_path):
    db = tmp_path / "runs.db"
    Store(db).close()
    code, out, err = run_main(capsys, ["report", db])
    assert code == 2 and out == "" and "holds no study" in err


# --------------------------------------------------------------------------- resume


def test_resume_continues_a_study_made_by_run(capsys, exp_file, tmp_path):
    db = tmp_path / "runs.db"
    assert run_main(capsys, ["run", exp_file, "--searcher", "bayes", "--trials", "8",
                             "--store", db, "--quiet", *FAST])[0] == 0
    before = assert_store_ok(db, 8)
    code, out, err = run_main(capsys, ["resume", db, "--trials", "12", "--json"])
    assert code == 0, err
    assert "resuming study 'default': 8 finished trials re-told" in err
    summary = json_line(out)
    assert summary["trials"] == 12 and summary["complete"] == 12
    assert summary["best"]["test_accuracy"] is not None
    after = assert_store_ok(db, 12)
    assert after[:8] == before
    with Store(db, readonly=True) as s:
        (study,) = s.studies()
    assert study["spec"]["searcher"] == "bayes"
    # without --trials the original request (8) is already met: nothing is trained
    code, out, err = run_main(capsys, ["resume", db, "--json", "--quiet"])
    assert code == 0 and json_line(out)["trials"] == 12
    assert stored_trials(db) == after


def test_population_auto_is_measured_by_run_and_kept_by_resume(capsys, exp_file, tmp_path,
                                                               monkeypatch):
    from jaxtune import sizing

    sizes = []
    monkeypatch.setattr(sizing, "default_population",
                        lambda exp, **kw: sizes.append(kw["memory_limit"]) or 2)
    db = tmp_path / "runs.db"
    fast = FAST[2:]  # without --population 4: the default, auto
    assert run_main(capsys, ["run", exp_file, "--searcher", "random", "--trials", "4",
                             "--store", db, "--quiet", *fast])[0] == 0
    assert len(sizes) == 1 and sizes[0] > 0  # measured within the memory limit
    with Store(db, readonly=True) as s:
        (study,) = s.studies()
    assert study["info"]["population"] == 2 and study["info"]["study"]["population"] == "auto"
    monkeypatch.setattr(sizing, "default_population", lambda exp, **kw: pytest.fail("measured"))
    code, out, err = run_main(capsys, ["resume", db, "--trials", "6", "--json", "--quiet"])
    assert code == 0, err
    assert json_line(out)["trials"] == 6


def test_resume_of_a_study_not_made_by_the_command(capsys, tmp_path):
    db = tmp_path / "runs.db"
    with Store(db) as s:
        s.open_study("default", {"steps": 20})
    code, out, err = run_main(capsys, ["resume", db])
    assert code == 2 and out == ""
    (line,) = error_lines(err)
    assert "not created by the jaxtune command" in line


# --------------------------------------------------------------------------- console script


def _console_script() -> str:
    exe = shutil.which("jaxtune") or str(Path(sys.executable).with_name("jaxtune"))
    if not os.path.exists(exe):
        pytest.fail("the `jaxtune` console script is not installed (pip install -e .)")
    return exe


def test_console_script_runs_a_study(tmp_path):
    exp = tmp_path / "plain_digits.py"
    exp.write_text(PLAIN_FILE)
    db = tmp_path / "runs.db"
    proc = subprocess.run(
        [_console_script(), "run", str(exp), "--searcher", "random", "--trials", "8",
         "--store", str(db), "--json", *FAST],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["trials"] == 8 and summary["best"]["test_accuracy"] is not None
    assert summary["compiles"] == 1  # one program for every round and the final evaluation
    assert_store_ok(db, 8)
    with Store(db, readonly=True) as s:
        (study,) = s.studies()
    assert study["spec"]["experiment"]["steps"] == 20  # --steps overrides the file's 40
    assert study["info"]["experiment_ref"] == str(exp)


def test_resume_runs_only_the_experiment_file_the_study_was_made_with(capsys, tmp_path):
    """A store records the SHA-256 of its experiment file: a changed or missing file is
    refused (a store received from someone else cannot make resume run a local file)
    unless the user names the file explicitly."""
    exp = tmp_path / "exp.py"
    exp.write_text(PLAIN_FILE)
    db = tmp_path / "runs.db"
    assert run_main(capsys, ["run", exp, "--searcher", "random", "--trials", "4",
                             "--store", db, "--quiet", *FAST])[0] == 0
    with Store(db, readonly=True) as s:
        (study,) = s.studies()
    assert study["info"]["experiment_sha256"] == hashlib.sha256(exp.read_bytes()).hexdigest()
    marker = tmp_path / "executed"
    exp.write_text(PLAIN_FILE + f"\nopen({str(marker)!r}, 'w').close()\n")
    code, _out, err = run_main(capsys, ["resume", db, "--trials", "8"])
    assert code == 2 and "not the one it was created with" in err and "--experiment" in err
    assert not marker.exists()  # the changed file never ran
    exp.unlink()
    code, _out, err = run_main(capsys, ["resume", db, "--trials", "8"])
    assert code == 2 and "missing" in err and not marker.exists()
    other = tmp_path / "checked.py"
    other.write_text(PLAIN_FILE)
    code, _out, err = run_main(capsys, ["resume", db, "--trials", "8", "--experiment", other,
                                       "--quiet"])
    assert code == 0, err
    assert_store_ok(db, 8)


def test_grid_searcher_with_a_resolution(capsys, exp_file, tmp_path):
    db = tmp_path / "runs.db"
    code, _out, err = run_main(capsys, ["run", exp_file, "--searcher", "grid", "--resolution",
                                       "3", "--trials", "6", "--store", db, "--json",
                                       "--quiet", *FAST])
    assert code == 0, err
    trials = assert_store_ok(db, 6)
    assert sorted({t.config["lr"] for t in trials}) == pytest.approx([1e-2, 1e-1, 1.0])
    with Store(db, readonly=True) as s:
        assert s.studies()[0]["spec"]["searcher_options"] == {"resolution": 3}


def test_run_again_after_its_store_was_deleted(capsys, exp_file, tmp_path):
    """The checkpoints of a study whose store was deleted are removed by the new study of
    that name, in one line: they neither break it (orbax refuses a step that exists) nor
    are resumed into it."""
    from jaxtune import checkpoint

    db = tmp_path / "x.db"
    argv = ["run", exp_file, "--searcher", "random", "--store", db, "--trials", 40,
            "--target", 0.0, "--checkpoint-rounds", 1, *FAST[:5], "--top-k", 1, "--final-seeds", 1,
            "--scheduler", "asha"]
    code, _, err = run_main(capsys, argv)
    assert code == 0 and "trials still running are left to a resume" in err, err
    folder = checkpoint.checkpoint_dir(db, "default")
    assert checkpoint.latest(folder) is not None
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{db}{suffix}"):
            os.remove(f"{db}{suffix}")
    code, _, again = run_main(capsys, argv)
    assert code == 0, again
    assert again.count(f"removed stale checkpoints {folder}") == 1, again
    assert "from the checkpoint" not in again
