"""Training in a GPU pod: where the train step runs is configuration.

``SEGMENT_TRAINING_MODE``: ``in_process`` (the default: the Airflow worker runs
``pipeline.train`` itself) or ``kubernetes`` (a ``KubernetesPodOperator`` starts the training image
on a GPU node, and the pod runs ``python -m segmentation.distributed pod``: the same
``pipeline.train``, under ``torchrun`` with DDP when the pod has several GPUs).

Nothing large crosses XCom: the pod gets the run dict (a few hundred bytes of references) as an
argument, reads the features snapshot from the artifact store (``SEGMENT_ARTIFACTS``: a folder
the pod mounts, or ``s3://...``), writes the model to the store's registry, and returns the train
step's small result dict through the operator's XCom sidecar (``/airflow/xcom/return.json``).

No secret is ever written into the pod spec: credentials (AWS keys, the S3 options, a warehouse
URL) come from a Kubernetes Secret through ``envFrom`` (``SEGMENT_TRAINING_SECRET``).

Everything here builds plain dicts (the pod manifest, the operator's keyword arguments), so the
spec is unit-tested without a cluster or even the Kubernetes provider; ``make_training_operator``
imports ``airflow.providers.cncf.kubernetes`` only when called.

Settings (environment of the DAG processor / worker, all optional)::

    SEGMENT_TRAINING_MODE            in_process | kubernetes
    SEGMENT_TRAINING_IMAGE           training image (default concrete-segments-train:<version>)
    SEGMENT_K8S_NAMESPACE            namespace (default segmentation)
    SEGMENT_TRAINING_GPUS            GPUs of the pod; > 1 runs torchrun with one rank per GPU (default 1)
    SEGMENT_TRAINING_CPU / _MEMORY   requests (default 4 / 24Gi); the memory is also the limit
    SEGMENT_TRAINING_SHM             size of the in-memory /dev/shm (default 8Gi)
    SEGMENT_TRAINING_NODE_SELECTOR   JSON object (default {"nvidia.com/gpu.present": "true"})
    SEGMENT_TRAINING_TOLERATIONS     JSON list (default: tolerate the nvidia.com/gpu taint)
    SEGMENT_TRAINING_SECRET          Secret injected with envFrom (default segmentation-training-env; "" for none)
    SEGMENT_TRAINING_SERVICE_ACCOUNT service account (default segmentation-training; "" for the namespace default)
    SEGMENT_TRAINING_STARTUP_TIMEOUT seconds to wait for scheduling + image pull (default 1200)
    SEGMENT_TRAINING_DEADLINE        activeDeadlineSeconds of the pod (default 21600)
    SEGMENT_K8S_CONN_ID              Airflow Kubernetes connection (default kubernetes_default)
    SEGMENT_ARTIFACTS                artifact store URL, passed to the pod
"""
from __future__ import annotations

import copy
import datetime as dt
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

IN_PROCESS = "in_process"
KUBERNETES = "kubernetes"
CONTAINER_NAME = "base"  # the KubernetesPodOperator's name for the main container
RUN_TEMPLATE = "{{ ti.xcom_pull(task_ids='%s') | tojson }}"
GPU_TAINT_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SCRATCH = "/scratch"


def _version() -> str:
    from segmentation import __version__

    return __version__


@dataclass
class TrainingPodSettings:
    """What the training pod needs; defaults suit a cluster with the NVIDIA device plugin."""

    image: str = field(default_factory=lambda: f"concrete-segments-train:{_version()}")
    namespace: str = "segmentation"
    gpus: int = 1
    gpu_resource: str = "nvidia.com/gpu"
    cpu_request: str = "4"
    memory_request: str = "24Gi"
    cpu_limit: str | None = None  # no CPU limit: throttling a data loader slows the GPU down
    shm_size: str = "8Gi"
    scratch_size: str = "50Gi"
    node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    tolerations: list[dict[str, Any]] = field(default_factory=lambda: [dict(GPU_TAINT_TOLERATION)])
    env_secret: str | None = "segmentation-training-env"
    service_account: str | None = "segmentation-training"
    artifacts_url: str | None = None
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: list[str] = field(default_factory=list)
    priority_class_name: str | None = None
    startup_timeout_seconds: int = 1200
    active_deadline_seconds: int = 6 * 3600
    kubernetes_conn_id: str = "kubernetes_default"
    in_cluster: bool | None = None
    run_as_user: int = 10001
    extra_env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=lambda: {
        "app.kubernetes.io/name": "concrete-segments", "app.kubernetes.io/component": "training"})

    def __post_init__(self) -> None:
        if int(self.gpus) < 0:
            raise ValueError(f"gpus must be >= 0, not {self.gpus}")
        self.gpus = int(self.gpus)
        for k, v in self.extra_env.items():
            if any(w in k.upper() for w in ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY", "CREDENTIAL")):
                raise ValueError(f"extra_env {k!r} looks like a secret: put it in the Secret {self.env_secret!r} "
                                 "(injected with envFrom), never in the pod spec")
            if "://" in str(v) and "@" in str(v).split("://", 1)[1].split("/", 1)[0]:
                raise ValueError(f"extra_env {k!r} holds a URL with credentials: use the Secret instead")


def training_mode(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    mode = (env.get("SEGMENT_TRAINING_MODE") or IN_PROCESS).strip().lower().replace("-", "_")
    if mode in ("k8s", "pod", "kubernetes_pod"):
        mode = KUBERNETES
    if mode not in (IN_PROCESS, KUBERNETES):
        raise ValueError(f"SEGMENT_TRAINING_MODE must be {IN_PROCESS!r} or {KUBERNETES!r}, not {mode!r}")
    return mode


def settings_from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> TrainingPodSettings:
    """Settings from ``SEGMENT_TRAINING_*`` variables (see the module docstring), then ``overrides``."""
    env = os.environ if env is None else env
    kw: dict[str, Any] = {}

    def put(key: str, var: str, conv=str) -> None:
        if var in env:
            raw = env[var]
            try:
                kw[key] = conv(raw)
            except ValueError as exc:
                raise ValueError(f"{var}={raw!r}: {exc}") from exc

    def as_json(kind):
        def conv(raw: str):
            value = json.loads(raw)
            if not isinstance(value, kind):
                raise ValueError(f"expected a JSON {kind.__name__}")
            return value
        return conv

    put("image", "SEGMENT_TRAINING_IMAGE")
    put("namespace", "SEGMENT_K8S_NAMESPACE")
    put("gpus", "SEGMENT_TRAINING_GPUS", int)
    put("cpu_request", "SEGMENT_TRAINING_CPU")
    put("memory_request", "SEGMENT_TRAINING_MEMORY")
    put("shm_size", "SEGMENT_TRAINING_SHM")
    put("node_selector", "SEGMENT_TRAINING_NODE_SELECTOR", as_json(dict))
    put("tolerations", "SEGMENT_TRAINING_TOLERATIONS", as_json(list))
    put("env_secret", "SEGMENT_TRAINING_SECRET", lambda s: s or None)
    put("service_account", "SEGMENT_TRAINING_SERVICE_ACCOUNT", lambda s: s or None)
    put("startup_timeout_seconds", "SEGMENT_TRAINING_STARTUP_TIMEOUT", int)
    put("active_deadline_seconds", "SEGMENT_TRAINING_DEADLINE", int)
    put("kubernetes_conn_id", "SEGMENT_K8S_CONN_ID")
    put("artifacts_url", "SEGMENT_ARTIFACTS")
    known = {f.name for f in fields(TrainingPodSettings)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown training pod setting(s): {sorted(unknown)}")
    kw.update(overrides)
    return TrainingPodSettings(**kw)


# ---------------------------------------------------------------------------------------------
# the pod
# ---------------------------------------------------------------------------------------------
def training_command(settings: TrainingPodSettings, run_json: str | None = None,
                     validated_json: str | None = None) -> tuple[list[str], list[str]]:
    """(command, args) of the training container: one process per GPU, under torchrun when > 1."""
    pod_args = ["pod"]
    if run_json is not None:
        pod_args += ["--run-json", run_json]
    if validated_json is not None:
        pod_args += ["--validated-json", validated_json]
    if settings.gpus > 1:
        return (["torchrun"], ["--standalone", f"--nproc_per_node={settings.gpus}", "-m", "segmentation.distributed",
                               *pod_args])
    return (["python", "-m", "segmentation.distributed"], pod_args)


def _resources(s: TrainingPodSettings) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": s.cpu_request, "memory": s.memory_request}
    limits: dict[str, Any] = {"memory": s.memory_request}
    if s.cpu_limit:
        limits["cpu"] = s.cpu_limit
    if s.gpus:
        # an extended resource: requests must equal limits (the device plugin allocates whole GPUs)
        requests[s.gpu_resource] = str(s.gpus)
        limits[s.gpu_resource] = str(s.gpus)
    return {"requests": requests, "limits": limits}


def pod_manifest(settings: TrainingPodSettings | None = None, run_json: str | None = None,
                 validated_json: str | None = None, name: str = "segmentation-train") -> dict[str, Any]:
    """The training pod as a Kubernetes manifest (a plain dict, camelCase, as ``kubectl`` reads it)."""
    s = settings or TrainingPodSettings()
    command, args = training_command(s, run_json, validated_json)
    env = [
        {"name": "SEGMENT_DEVICE", "value": "cuda" if s.gpus else "cpu"},
        {"name": "SEGMENT_DATA_DIR", "value": SCRATCH},  # the S3 store's download cache
        {"name": "HOME", "value": SCRATCH},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "OMP_NUM_THREADS", "value": "1"},
        {"name": "NCCL_DEBUG", "value": "WARN"},
    ]
    if s.artifacts_url:
        env.append({"name": "SEGMENT_ARTIFACTS", "value": s.artifacts_url})
    env += [{"name": k, "value": str(v)} for k, v in sorted(s.extra_env.items())]
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": s.image,
        "imagePullPolicy": s.image_pull_policy,
        "command": command,
        "args": args,
        "env": env,
        "resources": _resources(s),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "scratch", "mountPath": SCRATCH}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if s.env_secret:
        container["envFrom"] = [{"secretRef": {"name": s.env_secret}}]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # a failed try is retried by Airflow, never restarted in place
        "activeDeadlineSeconds": int(s.active_deadline_seconds),
        "terminationGracePeriodSeconds": 60,
        "nodeSelector": dict(s.node_selector),
        "tolerations": copy.deepcopy(s.tolerations),
        "securityContext": {"runAsNonRoot": True, "runAsUser": s.run_as_user, "runAsGroup": s.run_as_user,
                            "fsGroup": s.run_as_user},
        "containers": [container],
        "volumes": [
            # PyTorch (DataLoader workers, NCCL) needs far more shared memory than the 64 MiB default
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": s.shm_size}},
            {"name": "scratch", "emptyDir": {"sizeLimit": s.scratch_size}},
        ],
    }
    if s.service_account:
        spec["serviceAccountName"] = s.service_account
    if s.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in s.image_pull_secrets]
    if s.priority_class_name:
        spec["priorityClassName"] = s.priority_class_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": s.namespace, "labels": dict(s.labels)},
        "spec": spec,
    }


def operator_kwargs(settings: TrainingPodSettings | None = None, *, task_id: str = "train",
                    run_task_id: str = "start", validated_task_id: str = "validate", retries: int | None = None,
                    execution_timeout: dt.timedelta | None = None) -> dict[str, Any]:
    """Keyword arguments of the ``KubernetesPodOperator`` that trains (plain values only).

    - ``deferrable``: the worker slot is freed while the pod is scheduled and runs (a trigger waits).
    - ``startup_timeout_seconds``: GPU nodes may need to scale up and pull a large image.
    - ``durable`` (reattach on restart): a worker that dies mid-try reattaches to the running pod in
      the next attempt instead of starting a second one, and the pod's labels carry the try number,
      so there is never more than one training pod for a try; ``on_finish_action`` deletes the pod
      when it ends (success or failure) and ``on_kill_action`` when the task is killed.
    - ``arguments`` are Jinja templates pulling the run dict from XCom (small references only); the
      result comes back with ``do_xcom_push`` from ``/airflow/xcom/return.json``.
    - ``retries``: None leaves the DAG's ``default_args`` (retry delay and backoff too) in force.
    """
    s = settings or TrainingPodSettings()
    cmds, args = training_command(s, RUN_TEMPLATE % run_task_id, RUN_TEMPLATE % validated_task_id)
    kwargs = {
        "task_id": task_id,
        "name": f"segmentation-{task_id}".replace("_", "-"),
        "namespace": s.namespace,
        "image": s.image,
        "cmds": cmds,
        "arguments": args,
        "pod_template_dict": pod_manifest(s),
        "labels": dict(s.labels),
        "kubernetes_conn_id": s.kubernetes_conn_id,
        "in_cluster": s.in_cluster,
        "deferrable": True,
        "startup_timeout_seconds": int(s.startup_timeout_seconds),
        "durable": True,
        "on_finish_action": "delete_pod",
        "on_kill_action": "delete_pod",
        "do_xcom_push": True,
        "get_logs": True,
        "log_events_on_failure": True,
        "active_deadline_seconds": int(s.active_deadline_seconds),
        "execution_timeout": execution_timeout or dt.timedelta(seconds=int(s.active_deadline_seconds) + 1800),
    }
    if retries is not None:
        kwargs["retries"] = int(retries)
    return kwargs


def make_training_operator(settings: TrainingPodSettings | None = None, **kwargs: Any):
    """The ``KubernetesPodOperator`` that trains (call inside a DAG). ``kwargs`` go to
    ``operator_kwargs`` (task ids, retries) or, for other names, straight to the operator."""
    try:
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    except ImportError as exc:  # pragma: no cover - depends on the deployment
        raise ImportError(
            "SEGMENT_TRAINING_MODE=kubernetes needs apache-airflow-providers-cncf-kubernetes in the Airflow image"
        ) from exc
    own = {k: kwargs.pop(k) for k in ("task_id", "run_task_id", "validated_task_id", "retries", "execution_timeout")
           if k in kwargs}
    kw = operator_kwargs(settings or settings_from_env(), **own)
    kw.update(kwargs)
    return KubernetesPodOperator(**kw)


# ---------------------------------------------------------------------------------------------
# command line: render the manifest (docker/k8s/training-pod.yaml is this output)
# ---------------------------------------------------------------------------------------------
HEADER = """\
# Training pod template (rendered by `python -m segmentation.k8s render`; do not edit by hand:
# change segmentation/k8s.py and re-render, tests/test_k8s_and_docker.py checks they agree).
# The DAG's KubernetesPodOperator starts this pod with the run's arguments
# (`pod --run-json ... --validated-json ...`); to try it by hand, add them and `kubectl apply -f`.
# Credentials come from the Secret named in envFrom, never from this file.
"""


def render_yaml(settings: TrainingPodSettings | None = None) -> str:
    import yaml

    return HEADER + yaml.safe_dump(pod_manifest(settings), sort_keys=False, default_flow_style=False)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m segmentation.k8s", description="Render the training pod manifest.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="print the training pod manifest (settings from SEGMENT_TRAINING_*)")
    r.add_argument("--defaults", action="store_true", help="ignore the environment: the committed template")
    args = p.parse_args(argv)
    if args.command == "render":
        print(render_yaml(TrainingPodSettings() if args.defaults else settings_from_env()), end="")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
