"""DDP training on CPU (gloo, 2 processes under torchrun): same quality as one process, identical
weights on every rank, a model ConcreteGMVAE.load reads; and the training pod's entrypoint running
the pipeline's train step with its fit spread over two ranks."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import adjusted_rand_score

from segmentation import ConcreteGMVAE
from segmentation.distributed import ParquetSnapshot, build_parser
from segmentation.synthetic import FEATURE_TYPES, planted_customers

ROOT = Path(__file__).resolve().parents[1]
TYPES_ARG = ",".join(f"{k}={v}" for k, v in FEATURE_TYPES.items())


def _torchrun(*args: str, nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "segmentation.distributed", *args]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"torchrun failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    return res


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    df, seg = planted_customers(n=3000, k=4, seed=1, missing=0.1)
    path = tmp_path_factory.mktemp("ddp") / "features.parquet"
    # small row groups: each rank reads only the groups of its half
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=256)
    return path, df, seg


def test_snapshot_shards_read_only_their_rows(planted):
    path, df, _ = planted
    snap = ParquetSnapshot(path)
    assert snap.n_rows == len(df) and len(snap.row_group_rows) == 12
    got = pd.concat([snap.read_shard(r, 3, ["customer_id", "spend"]) for r in range(3)], ignore_index=True)
    pd.testing.assert_frame_equal(got, df[["customer_id", "spend"]].reset_index(drop=True))
    t = snap.read_rows(250, 530, ["customer_id"])  # spans row groups 0..2
    assert t.column(0).to_pylist() == df["customer_id"].iloc[250:530].tolist()
    with pytest.raises(ValueError, match="cannot be split"):
        snap.shard_range(0, 2000)


def test_help_describes_both_commands(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "torchrun" in out and "train" in out and "pod" in out


def test_ddp_two_processes_match_single_process_quality(tmp_path, planted):
    path, df, seg = planted
    epochs = 50
    t0 = time.perf_counter()
    res = _torchrun("train", str(path), "--k", "4", "--type", TYPES_ARG, "--epochs", str(epochs),
                    "--device", "cpu", "--out", str(tmp_path / "model"), "--save-rank-weights", str(tmp_path / "ranks"))
    ddp_seconds = time.perf_counter() - t0
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["rows"] == len(df)

    model = ConcreteGMVAE.load(str(tmp_path / "model"))  # the artifact format of ConcreteGMVAE.save
    ddp_ari = adjusted_rand_score(seg, model.predict(df))
    single = ConcreteGMVAE(n_segments=4, seed=0, epochs=epochs, progress=False).fit(df, FEATURE_TYPES)
    single_ari = adjusted_rand_score(seg, single.predict(df))
    print(f"DDP 2x gloo: ARI {ddp_ari:.3f} in {ddp_seconds:.1f} s wall; single process: ARI {single_ari:.3f}")
    assert ddp_ari >= 0.9, ddp_ari
    assert ddp_ari >= single_ari - 0.05, (ddp_ari, single_ari)

    # both ranks ended with exactly the same weights, and they are the saved ones
    from safetensors.torch import load_file

    r0, r1 = (load_file(str(tmp_path / "ranks" / f"rank{r}.safetensors")) for r in (0, 1))
    assert r0.keys() == r1.keys()
    for k in r0:
        assert np.array_equal(r0[k].numpy(), r1[k].numpy()), k
    saved = load_file(str(tmp_path / "model" / "weights.safetensors"))
    assert all(np.array_equal(saved[k].numpy(), r0[k].numpy()) for k in saved)
    dist_info = model.metrics_["distributed"]
    assert dist_info["world_size"] == 2 and dist_info["backend"] == "gloo"
    assert len(set(dist_info["rank_weight_checksums"])) == 1
    assert dist_info["rows_per_rank_step"] == 128  # the global batch of 256 split over 2 ranks
    # the history holds every rank's rows, and the preprocessing was fitted on all rows
    assert model.history_[0]["rows"] == len(df) - 2 * round(len(df) / 2 * 0.1)
    assert model.fingerprint_["rows"] == len(df)
    ref = ConcreteGMVAE(n_segments=4).set_params(min_level_count=10)
    from segmentation.model.preprocessing import TablePreprocessor

    assert model.preprocessor_.params == TablePreprocessor(FEATURE_TYPES, ref.min_level_count).fit(df).params


def test_training_pod_entrypoint_under_torchrun(tmp_path):
    """`pod` runs pipeline.train for a run in the artifact store; the fit uses both ranks; the
    model lands in the registry, is promoted, and the small result is written for XCom."""
    from segmentation import pipeline

    df, seg = planted_customers(n=2000, k=3, seed=4, missing=0.05)
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({
        "name": "synthetic", "entity_key": "customer_id",
        "features_relation": {"schema": "features", "table": "customer_features"},
        "model": {"n_segments": 3, "epochs": 25, "kl_anneal_epochs": 5, "seed": 0},
        "features": [{"name": k, "type": v} for k, v in FEATURE_TYPES.items()],
    }))
    run = pipeline.start_run("2024-03-01", spec_path=str(spec), artifacts=str(tmp_path / "store"))
    store = pipeline._store(run)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False),
                   store.run_dir(run["run_date"]) / "features.parquet", row_group_size=200)
    xcom = tmp_path / "xcom" / "return.json"
    xcom.parent.mkdir()
    (tmp_path / "run.json").write_text(json.dumps(run))
    _torchrun("pod", "--run-json", f"@{tmp_path / 'run.json'}", "--validated-json", json.dumps({"drift_detected": False}),
              "--device", "cpu", "--xcom-path", str(xcom))
    result = json.loads(xcom.read_text())
    assert result["world_size"] == 2 and result["mode"] == "retrain" and result["promoted"], result
    assert len(json.dumps(result)) < 2000  # references only: nothing large through XCom
    # the pod only trains and gates: the production pointer moves when the run's publish commits
    assert store.production() is None
    model = ConcreteGMVAE.load(str(store.model_dir(result["model_version"])))
    assert model.metrics_["distributed"]["world_size"] == 2
    # the start is recorded as a single-process fit records it (it was missing: the run said init None)
    assert model.metrics_["init"]["init"] == "pretrain" and model.metrics_["init"]["start"] == "gmm-consensus"
    assert adjusted_rand_score(seg, model.predict(df)) >= 0.9
