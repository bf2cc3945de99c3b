"""The ``segment`` command line, run as users run it: the installed console script, in a subprocess.

- ``--help`` of the program and of every subcommand exits 0 and lists its options.
- ``segment fit`` on a small planted CSV, then ``segment assign``: one output row per input row,
  segment ids in range, the id column copied.
- Errors exit non-zero with one clear line: a missing file, an unknown feature type, a bad date.
- The demo end to end: ``segment demo init``, ``segment run --date 2011-12-09``, ``segment summary``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SEGMENT = Path(sys.executable).parent / "segment"


def segment(*args: str, cwd: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENT_")}
    environ.update(SEGMENT_DATA_DIR=str(cwd / ".data"), DBT_SEND_ANONYMOUS_USAGE_STATS="False", DO_NOT_TRACK="1", **env)
    command = [str(SEGMENT)] if SEGMENT.exists() else [sys.executable, "-m", "segmentation.cli"]
    return subprocess.run([*command, *args], cwd=cwd, env=environ, capture_output=True, text=True, check=False, timeout=timeout)


def _out(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


# ---------------------------------------------------------------------------------------------
# help
# ---------------------------------------------------------------------------------------------
def _commands() -> dict[tuple[str, ...], list[str]]:
    """Every (sub)command of the real parser with the options its help must mention."""
    import argparse

    from segmentation.cli import build_parser

    found: dict[tuple[str, ...], list[str]] = {}

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        names: list[str] = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    names.append(name)
                    walk(sub, (*path, name))
            elif not isinstance(action, argparse._HelpAction):
                names.append(max(action.option_strings, key=len) if action.option_strings else action.metavar or action.dest)
        found[path] = names

    walk(build_parser(), ())
    return found


COMMANDS = _commands()
# what each command must offer at least (so that losing a subcommand or option fails here)
REQUIRED = {
    (): ["fit", "assign", "run", "demo", "summary", "--verbose", "--quiet", "SEGMENT_WAREHOUSE_URL"],
    ("fit",): ["DATA", "--k", "--out", "--type", "--spec", "--exclude", "--estimator", "--epochs", "--seed", "--device"],
    ("assign",): ["MODEL_DIR", "DATA", "--out", "--id-column", "--probabilities"],
    ("run",): ["--date", "--warehouse", "--config", "--k", "--full-retrain", "--artifacts"],
    ("demo",): ["init"],
    ("demo", "init"): ["--warehouse", "--keep"],
    ("summary",): ["--warehouse", "--config"],
}


def test_every_required_command_exists() -> None:
    assert set(REQUIRED) <= set(COMMANDS), sorted(set(REQUIRED) - set(COMMANDS))


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=lambda c: " ".join(c) or "segment")
def test_help_exits_zero_and_lists_the_options(command: tuple[str, ...], tmp_path: Path) -> None:
    proc = segment(*command, "--help", cwd=tmp_path)
    assert proc.returncode == 0, _out(proc)
    assert proc.stdout.startswith(f"usage: segment {' '.join(command)}".rstrip()), _out(proc)
    for option in dict.fromkeys([*COMMANDS[command], *REQUIRED.get(command, [])]):
        assert option in proc.stdout, f"`segment {' '.join(command)} --help` does not mention {option}"


def test_no_subcommand_is_a_usage_error(tmp_path: Path) -> None:
    proc = segment(cwd=tmp_path)
    assert proc.returncode == 2 and "usage: segment" in proc.stderr, _out(proc)


# ---------------------------------------------------------------------------------------------
# fit and assign on a file
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from segmentation.synthetic import planted_customers

    df, _ = planted_customers(n=600, k=3, seed=1)
    path = tmp_path_factory.mktemp("cli") / "customers.csv"
    df.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def fitted(planted_csv: Path) -> Path:
    out = planted_csv.parent / "model"
    proc = segment("fit", str(planted_csv), "--k", "3", "--out", str(out), "--exclude", "customer_id",
                   "--type", "spend=money,visits=count", "--epochs", "15", "--threads", "1", "--pretrain-epochs", "5",
                   "--finetune-lr", "5e-4", "--prior-covariance", "full", cwd=planted_csv.parent)
    assert proc.returncode == 0, _out(proc)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["config"]["init"] == "pretrain" and meta["config"]["pretrain_epochs"] == 5
    assert meta["config"]["finetune_learning_rate"] == 5e-4 and meta["config"]["start_clusters"] == "gmm"
    assert meta["config"]["prior_covariance"] == "full"
    assert meta["metrics"]["init"]["pretrain_epochs"] == 5 and meta["metrics"]["init"]["start"] == "gmm-consensus"
    assert "model saved to" in proc.stdout and "spend=money" in proc.stdout and "visits=count" in proc.stdout
    assert (out / "weights.safetensors").is_file() and (out / "metadata.json").is_file()
    return out


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_fit_then_assign_gives_one_row_per_input_row(fitted: Path, planted_csv: Path, suffix: str) -> None:
    import pandas as pd

    dest = planted_csv.parent / f"assigned{suffix}"
    proc = segment("assign", str(fitted), str(planted_csv), "--out", str(dest), "--id-column", "customer_id",
                   "--probabilities", cwd=planted_csv.parent)
    assert proc.returncode == 0, _out(proc)
    assert f"assigned 600 rows to {dest}" in proc.stdout
    source = pd.read_csv(planted_csv)
    got = pd.read_csv(dest) if suffix == ".csv" else pd.read_parquet(dest)
    assert len(got) == len(source) == 600
    assert list(got.columns[:4]) == ["customer_id", "segment_id", "segment_probability", "runner_up_segment_id"]
    assert got["customer_id"].tolist() == source["customer_id"].tolist()   # copied, in input order
    assert got["segment_id"].between(0, 2).all() and got["runner_up_segment_id"].between(0, 2).all()
    assert (got["segment_id"] != got["runner_up_segment_id"]).all()
    assert got["segment_probability"].between(0, 1).all()
    probs = got[[f"p_segment_{k}" for k in range(3)]]
    assert ((probs.sum(axis=1) - 1).abs() < 1e-4).all()
    assert (probs.to_numpy().argmax(axis=1) == got["segment_id"].to_numpy()).all()


def test_missing_data_file_is_a_clear_error(tmp_path: Path) -> None:
    proc = segment("fit", str(tmp_path / "nope.csv"), "--k", "3", "--out", str(tmp_path / "m"), cwd=tmp_path)
    assert proc.returncode != 0
    assert "nope.csv does not exist" in proc.stderr and "Traceback" not in proc.stderr, _out(proc)
    assert not (tmp_path / "m").exists()


def test_missing_model_is_a_clear_error(planted_csv: Path, tmp_path: Path) -> None:
    proc = segment("assign", str(tmp_path / "no-model"), str(planted_csv), "--out", str(tmp_path / "a.csv"), cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, _out(proc)
    assert "no-model" in proc.stderr and proc.stderr.startswith("error:"), _out(proc)


def test_unknown_feature_type_is_a_clear_error(planted_csv: Path, tmp_path: Path) -> None:
    proc = segment("fit", str(planted_csv), "--k", "3", "--out", str(tmp_path / "m"), "--type", "spend=currency",
                   cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, _out(proc)
    assert "'spend'" in proc.stderr and "'currency'" in proc.stderr and "money" in proc.stderr, _out(proc)


def test_malformed_type_declaration_is_a_clear_error(planted_csv: Path, tmp_path: Path) -> None:
    proc = segment("fit", str(planted_csv), "--k", "3", "--out", str(tmp_path / "m"), "--type", "spend", cwd=tmp_path)
    assert proc.returncode != 0 and "NAME=TYPE" in proc.stderr, _out(proc)


def test_unknown_id_column_is_a_clear_error(fitted: Path, planted_csv: Path, tmp_path: Path) -> None:
    proc = segment("assign", str(fitted), str(planted_csv), "--out", str(tmp_path / "a.csv"), "--id-column", "cust",
                   cwd=tmp_path)
    assert proc.returncode != 0 and "--id-column 'cust'" in proc.stderr, _out(proc)


@pytest.mark.parametrize("args, problem", [
    (("fit", "DATA", "--k", "3", "--out", "m", "--hidden", "a,b"), "argument --hidden: 'a,b': give positive whole numbers"),
    (("fit", "DATA", "--k", "3", "--out", "m", "--hidden", "64,0"), "every width must be at least 1"),
    (("fit", "DATA", "--k", "3", "--out", "m", "--device", "tpu"), "argument --device: 'tpu': use auto, cpu, cuda"),
    (("fit", "DATA", "--k", "3", "--out", "m", "--threads", "0"), "argument --threads: 0 is below 1"),
    (("fit", "DATA", "--k", "3", "--out", "m", "--pretrain-noise", "1"), "argument --pretrain-noise: 1.0 is not in [0, 1)"),
    (("fit", "DATA", "--k", "3", "--out", "m", "--finetune-lr", "0"), "argument --finetune-lr: 0.0 is not above 0"),
    (("fit", "DATA", "--k", "3", "--out", "m", "--finetune-lr", "nan"), "argument --finetune-lr: 'nan' is not a finite"),
    (("fit", "DATA", "--k", "3", "--out", "m", "--start-clusters", "dbscan"), "argument --start-clusters: invalid choice"),
    (("fit", "DATA", "--k", "3", "--out", "m", "--prior-covariance", "tied"), "argument --prior-covariance: invalid choice"),
    (("assign", "m", "DATA", "--out", "o.xlsx"), "argument --out: 'o.xlsx': the output must end in .parquet"),
    (("fit", "DATA", "--k", "3", "--out", "m", "--lr", "inf"), "argument --lr: 'inf' is not a finite number"),
    (("fit", "DATA", "--k", "3", "--out", "m", "--tau-min", "nan"), "argument --tau-min: 'nan' is not a finite number"),
    (("fit", "DATA", "--k", "3", "--out", "m", "--patience", "-5"), "argument --patience: -5 is below 1"),
])
def test_bad_option_values_are_named_before_any_work(args: tuple[str, ...], problem: str, planted_csv: Path,
                                                    tmp_path: Path) -> None:
    """Found by the break-it review: these options failed late with a raw ValueError, a list of
    every torch device type, or silently (threads 0; an .xlsx written as Parquet)."""
    argv = [str(planted_csv) if a == "DATA" else a for a in args]
    proc = segment(*argv, cwd=tmp_path)
    assert proc.returncode == 2 and problem in proc.stderr and "Traceback" not in proc.stderr, _out(proc)
    assert not (tmp_path / "m").exists() and not (tmp_path / "o.xlsx").exists()


@pytest.mark.parametrize("date", ["bad", "2011-13-45", "09/12/2011"])
def test_run_with_a_bad_date_is_a_clear_error(date: str, tmp_path: Path) -> None:
    proc = segment("run", "--date", date, "--warehouse", f"duckdb:///{tmp_path}/w.duckdb", cwd=tmp_path)
    assert proc.returncode != 0, _out(proc)
    assert f"run date {date!r} is not a date (YYYY-MM-DD)" in proc.stderr and "Traceback" not in proc.stderr, _out(proc)
    assert not (tmp_path / "w.duckdb").exists()


def test_run_on_an_empty_warehouse_names_the_missing_table(tmp_path: Path) -> None:
    proc = segment("run", "--date", "2011-12-09", "--warehouse", f"duckdb:///{tmp_path}/w.duckdb", cwd=tmp_path)
    assert proc.returncode != 0, _out(proc)
    assert "raw.transactions" in proc.stderr and "segment demo init" in proc.stderr, _out(proc)


def test_fit_refuses_an_out_that_cannot_be_a_model_folder_before_training(planted_csv: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("not a folder")
    proc = segment("fit", str(planted_csv), "--k", "3", "--out", "taken", cwd=tmp_path)
    assert proc.returncode != 0 and "--out taken: a file of that name exists" in proc.stderr, _out(proc)
    assert "epoch" not in proc.stderr  # refused before any training
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_summary_without_a_warehouse_creates_none(tmp_path: Path) -> None:
    """Found by the README walk-through: `segment summary` outside the repository opened (and so
    created) an empty ./.data/warehouse.duckdb. A read-only command now says where it looked."""
    proc = segment("summary", cwd=tmp_path)  # the default: $SEGMENT_DATA_DIR/warehouse.duckdb
    assert proc.returncode == 0 and f"no warehouse at {tmp_path}/.data/warehouse.duckdb" in proc.stdout, _out(proc)
    assert "make demo" in proc.stdout and not (tmp_path / ".data").exists()
    missing = tmp_path / "elsewhere" / "w.duckdb"
    proc = segment("summary", "--warehouse", f"duckdb:///{missing}", cwd=tmp_path)
    assert f"no warehouse at {missing}" in proc.stdout and not missing.parent.exists(), _out(proc)


# ---------------------------------------------------------------------------------------------
# the demo end to end (one full nightly run, about a minute)
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_init_run_and_summary(tmp_path: Path) -> None:
    warehouse = f"duckdb:///{tmp_path}/w.duckdb"
    proc = segment("demo", "init", "--warehouse", warehouse, cwd=tmp_path)
    assert proc.returncode == 0, _out(proc)
    assert "raw.transactions 541,909 lines" in proc.stdout and "raw.customers 4,372" in proc.stdout

    before = segment("summary", "--warehouse", warehouse, cwd=tmp_path)
    assert before.returncode == 0 and "nothing published yet" in before.stdout, _out(before)

    proc = segment("-q", "run", "--date", "2011-12-09", "--warehouse", warehouse, cwd=tmp_path)
    assert proc.returncode == 0, _out(proc)
    assert "run online_retail-2011-12-09:" in proc.stdout and "customers in 8 segments" in proc.stdout, _out(proc)
    assert (tmp_path / ".data" / "artifacts" / "production.json").is_file()   # $SEGMENT_DATA_DIR/artifacts

    proc = segment("summary", "--warehouse", warehouse, cwd=tmp_path)
    assert proc.returncode == 0, _out(proc)
    out = proc.stdout
    assert "Published by run online_retail-2011-12-09 (run date 2011-12-09" in out
    segment_lines = [line for line in out.splitlines() if line.strip().startswith("segment ")]
    assert len(segment_lines) == 8, out
    assert "customers in 8 segments" in out
    for table in ("segment_assignments", "segment_assignments_current", "segments", "segment_profiles",
                  "segmentation_runs"):
        assert f"segments.{table}" in out
    assert "SELECT s.label, count(*) AS customers" in out
    assert "FROM segments.segment_assignments_current c JOIN segments.segments s USING (segment_id)" in out

    # the query the summary suggests runs as printed
    import duckdb

    sql = out[out.index("SELECT s.label"):].strip()
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    try:
        got = con.sql(sql).fetchall()
    finally:
        con.close()
    assert len(got) >= 1 and sum(r[1] for r in got) > 4000
