"""Nightly customer segmentation (Airflow 3): a thin wiring of ``segmentation.pipeline``.

extract -> features (dbt) -> validate (Great Expectations) -> train or refresh -> score -> publish -> report

Each task calls one library function with the warehouse URL (resolved inside the task from the
``segment_warehouse`` Connection or $SEGMENT_WAREHOUSE_URL) and passes only small references
through XCom. Heavy imports (torch, dbt, Great Expectations) happen inside the tasks.
"""
from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import Asset, BaseHook, Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException
from airflow.timetables.interval import CronDataIntervalTimetable

from segmentation.k8s import KUBERNETES, training_mode  # light: no torch, no Kubernetes provider

# Where training runs (SEGMENT_TRAINING_MODE: in_process, the default, or kubernetes: a GPU pod)
# and how scoring runs (SEGMENT_SCORING_MODE: single, the default, or sharded: mapped tasks).
TRAINING_MODE = training_mode()
SHARDED_SCORING = os.environ.get("SEGMENT_SCORING_MODE", "single").strip().lower() == "sharded"

SEGMENT_TABLES = Asset(name="segment_assignments_current", uri="x-segmentation://segments/segment_assignments_current")


def _url() -> str:
    from segmentation.orchestration import resolve_warehouse_url

    return resolve_warehouse_url(BaseHook.get_connection)


def _record_failure(context) -> None:
    """on_failure_callback (final failure only, not retries): record the failed run, tables untouched."""
    from segmentation.pipeline import record_failure

    if context["ti"].task_id == "report":  # the segments are already published: the run itself succeeded
        return
    run = context["ti"].xcom_pull(task_ids="start")
    if run:
        record_failure(_url(), run, context["ti"].task_id, str(context.get("exception") or "task failed"))


@dag(
    dag_id="customer_segmentation",
    description="Nightly customer segments with a Concrete GMVAE, published to the warehouse",
    # [D, D+1) data intervals: the run at D+1 00:00 UTC covers day D (not the zero-width cron default)
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    # early enough for the demo data (2010-12 .. 2011-12); catchup is off, so no backlog is scheduled
    start_date=dt.datetime(2010, 12, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["segmentation", "ml", "warehouse"],
    default_args={
        "owner": "data-team",
        "retries": int(os.environ.get("SEGMENT_TASK_RETRIES", "2")),
        "retry_delay": dt.timedelta(minutes=5),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(hours=1),
        "on_failure_callback": _record_failure,
    },
    params={
        "as_of_date": Param(None, type=["null", "string"], format="date",
                            description="Manual runs: segment as of the end of this day (YYYY-MM-DD)"),
        "n_segments": Param(None, type=["null", "integer"], minimum=2, maximum=500,
                            description="Number of segments (default: the spec's)"),
        "full_retrain": Param(False, type="boolean", description="Train from scratch instead of refreshing"),
    },
    doc_md=__doc__,
)
def customer_segmentation():
    @task
    def start() -> dict:
        from segmentation.orchestration import run_window
        from segmentation.pipeline import start_run

        ctx = get_current_context()
        params = ctx["params"]
        run_date, as_of = run_window(params, ctx.get("data_interval_start"), ctx.get("data_interval_end"))
        return start_run(run_date, as_of=as_of, spec_path=os.environ.get("SEGMENT_SPEC"),
                         n_segments=params.get("n_segments"), full_retrain=bool(params.get("full_retrain")),
                         trigger=f"airflow:{ctx['run_id']}")

    @task
    def extract(run: dict) -> dict:
        from segmentation import pipeline
        from validation import ValidationFailed

        try:
            return pipeline.extract(_url(), run)
        except ValidationFailed as exc:  # bad raw data does not fix itself on retry
            raise AirflowFailException(f"raw data failed validation, nothing built or published:\n{exc}") from exc

    @task
    def features(run: dict, extracted: dict) -> dict:
        from segmentation import pipeline

        return pipeline.features(_url(), run)

    @task
    def validate(run: dict, extracted: dict, built: dict) -> dict:
        from segmentation import pipeline
        from validation import ValidationFailed

        try:
            return pipeline.validate(_url(), run, extracted)
        except ValidationFailed as exc:  # bad data does not fix itself on retry
            raise AirflowFailException(f"validation failed, nothing trained or published:\n{exc}") from exc

    @task
    def train(run: dict, validated: dict) -> dict:
        from segmentation import pipeline

        return pipeline.train(_url(), run, validated)

    @task
    def score(run: dict, trained: dict) -> dict:
        from segmentation import pipeline

        return pipeline.score(_url(), run, trained)

    @task(outlets=[SEGMENT_TABLES])
    def publish(run: dict, trained: dict, scored: dict, validated: dict) -> dict:
        from segmentation import pipeline

        return pipeline.publish(_url(), run, trained, scored, validated)

    @task
    def report(run: dict, published: dict) -> dict:
        from segmentation import pipeline

        return pipeline.report(_url(), run)

    @task
    def plan_score_shards(run: dict, trained: dict) -> list[dict]:
        from segmentation.scoring import plan_run_shards

        return plan_run_shards(run)  # row ranges only

    @task
    def score_shard(run: dict, trained: dict, shard: dict) -> dict:
        from segmentation import scoring

        return scoring.score_shard(run, trained, shard)  # writes runs/<D>/score-parts/part-NNNNN.parquet

    @task(task_id="score")
    def finalize_scores(run: dict, trained: dict, parts: list[dict]) -> dict:
        from segmentation import scoring

        return scoring.finalize_scores(_url(), run, trained, list(parts))  # one atomic assignments.parquet

    run = start()
    extracted = extract(run)
    built = features(run, extracted)
    validated = validate(run, extracted, built)
    if TRAINING_MODE == KUBERNETES:
        from segmentation.k8s import make_training_operator

        train_pod = make_training_operator(task_id="train")  # its arguments pull start's and validate's XComs
        [run, validated] >> train_pod
        trained = train_pod.output
    else:
        trained = train(run, validated)
    if SHARDED_SCORING:
        shards = plan_score_shards(run, trained)
        parts = score_shard.partial(run=run, trained=trained).expand(shard=shards)
        scored = finalize_scores(run, trained, parts)
    else:
        scored = score(run, trained)
    published = publish(run, trained, scored, validated)
    report(run, published)


customer_segmentation()
