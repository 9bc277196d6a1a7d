"""The docs' commands and links are real: every `make` target, CLI flag and relative link they name exists."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_PAGES = tuple(sorted((REPO / "docs").glob("*.md")))
DOCS = (REPO / "README.md", *DOC_PAGES, REPO / "k8s" / "README.md")
VENV_PYTHON = {
    ".venv": REPO / ".venv" / "bin" / "python",
    ".venv-airflow": REPO / ".venv-airflow" / "bin" / "python",
}
# Programs that need Airflow run in its own environment (it cannot share one with kserve).
AIRFLOW_MODULES = ("tools.",)
# `python -m stages.<name>` in the docs means any stage: their shared flags come from one parser.
STAGE_PLACEHOLDER = "stages.<name>"
# Flags named alone in prose that belong to third-party programs, not to a program of this repository.
THIRD_PARTY_FLAGS = {
    "--no-deps": "pip install, in the Dockerfiles",
    "--allowed-hosts": "mlflow server, in the chart",
    "--reset-then-reuse-values": "helm upgrade, in docs/monitoring.md",
    "--reuse-values": "helm upgrade, named in docs/monitoring.md as the flag not to use",
    "--wait": "helm install, in docs/kubernetes.md",
}

# Fences may be indented (inside a list item); the closing one is the next line that starts with ```.
FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`([^`]+)`")
COMMAND_SEPARATOR = re.compile(r"\n|;|&&|\|\||\|")
COMMENT = re.compile(r"(?:^|\s)#.*$", re.MULTILINE)
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
TARGET = re.compile(r"^[A-Za-z0-9][\w.-]*$")
FLAG = re.compile(r"--[A-Za-z0-9][\w-]*")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass(frozen=True)
class Program:
    """A program the docs call with flags: a module (`python -m x`) or a script path, and its interpreter."""

    python: str  # key of VENV_PYTHON
    module: str = ""
    script: str = ""

    def __str__(self) -> str:
        return f"python -m {self.module}" if self.module else f"python {self.script}"


def split_code(text: str) -> tuple[list[str], str]:
    """The code of a Markdown text (fenced blocks and inline spans) and its prose with the code removed.

    Args:
        text: Markdown.

    Returns:
        The code snippets, and the text outside fenced blocks (links are checked there).
    """
    blocks = FENCE.findall(text)
    prose = FENCE.sub("", text)
    # A span may wrap over a line break in the source; the shell reads it as one line.
    spans = [" ".join(span.split()) for span in CODE_SPAN.findall(prose)]
    return [*blocks, *spans], prose


def commands(code: str) -> list[list[str]]:
    """The simple commands of a snippet as token lists: comments dropped, `\\` continuations joined.

    Args:
        code: a fenced block or an inline code span.

    Returns:
        One token list per command.
    """
    code = COMMENT.sub("", code.replace("\\\n", " "))
    return [part.split() for part in COMMAND_SEPARATOR.split(code) if part.strip()]


def make_targets_named(tokens: list[str]) -> list[str]:
    """The targets of a `[VAR=value ...] make [VAR=value|-opt ...] target ...` command, else none."""
    if "make" not in tokens:
        return []
    at = tokens.index("make")
    if not all(ASSIGNMENT.match(token) for token in tokens[:at]):
        return []  # `make` as an argument or in prose, not the command
    targets = []
    for token in tokens[at + 1 :]:
        if ASSIGNMENT.match(token) or token.startswith("-"):
            continue
        if not TARGET.match(token):
            break
        targets.append(token)
    return targets


def program_and_flags(tokens: list[str]) -> tuple[Program, list[str]] | None:
    """The repository program a command runs and the long flags it passes, or None for anything else.

    Recognises `[VAR=value ...] [.venv*/bin/]python -m <module> ...`, `python <path>.py ...` and a bench
    script named alone (`serving_bench.py --requests 300`).
    """
    while tokens and ASSIGNMENT.match(tokens[0]):
        tokens = tokens[1:]
    if not tokens:
        return None
    interpreter = tokens[0]
    if re.fullmatch(r"(?:.*/)?python3?", interpreter):
        venv = (
            ".venv-airflow" if ".venv-airflow/" in interpreter else ".venv" if ".venv/" in interpreter else ""
        )
        rest = tokens[1:]
    elif interpreter.endswith(".py") and (REPO / "bench" / Path(interpreter).name).is_file():
        venv, rest = (
            ".venv",
            tokens,
        )  # a bench script named alone; a bare `stages/x.py` is a file, not a command
    else:
        return None
    if rest[:1] == ["-m"] and len(rest) > 1:
        module = rest[1]
        if module != STAGE_PLACEHOLDER and not _in_repo(module):
            return None  # a third-party module (`python -m mlflow server`): its flags are its own business
        venv = venv or (".venv-airflow" if module.startswith(AIRFLOW_MODULES) else ".venv")
        program, args = Program(venv, module=module), rest[2:]
    elif rest and rest[0].endswith(".py"):
        script = _script_path(rest[0])
        if script is None:
            return None
        program, args = Program(venv or ".venv", script=script), rest[1:]
    else:
        return None
    flags = [match.group(0) for arg in args if (match := FLAG.match(arg.lstrip("[(")))]
    return program, flags


def _in_repo(module: str) -> bool:
    path = REPO / module.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()


def _script_path(name: str) -> str | None:
    for candidate in (REPO / name, REPO / "bench" / name):
        if candidate.is_file():
            return str(candidate.relative_to(REPO))
    return None


@functools.cache
def makefile_targets() -> frozenset[str]:
    """Every target of the Makefile, from make's own database (`make -pRrq`): includes and variables count."""
    database = subprocess.run(
        ["make", "-pRrq", "-f", "Makefile", "__docs_test_no_such_goal__"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,  # -q exits 1 or 2 for the unknown goal; the database is printed either way
    ).stdout
    targets: set[str] = set()
    previous = ""
    for line in database.splitlines():
        match = re.match(r"^([^\s#:=%.][^:=]*?):(?!=)", line)
        if match and previous != "# Not a target:":
            targets.update(match.group(1).split())
        previous = line
    assert "help" in targets, f"could not read the Makefile's targets from `make -pRrq`:\n{database[:2000]}"
    return frozenset(targets)


@functools.cache
def accepted_flags(program: Program) -> frozenset[str]:
    """The long flags a program's argparse parser accepts, from its `--help` (one run per program)."""
    if program.module == STAGE_PLACEHOLDER:
        sys.path.insert(0, str(REPO))
        from core.cli import stage_parser  # light: argparse and the config loader, no TensorFlow

        return frozenset(FLAG.findall(stage_parser("<name>", "").format_help()))
    python = VENV_PYTHON[program.python]
    if not python.exists():
        pytest.skip(f"{python.relative_to(REPO)} not found: `make setup` / `make setup-airflow` create it")
    argv = [str(python), "-m", program.module] if program.module else [str(python), program.script]
    result = subprocess.run(
        [*argv, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"{program} --help failed:\n{result.stderr[-2000:]}"
    return frozenset(FLAG.findall(result.stdout))


@functools.cache
def documented_programs() -> tuple[Program, ...]:
    """Every repository program the docs pass flags to, in the order first named."""
    programs: dict[Program, None] = {}
    for doc in DOCS:
        for snippet in split_code(doc.read_text())[0]:
            for tokens in commands(snippet):
                if (found := program_and_flags(tokens)) and found[1]:  # some (dag_parse_bench) have no parser
                    programs[found[0]] = None
    return tuple(programs)


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (fenced code is not a heading)."""
    anchors: set[str] = set()
    for line in FENCE.sub("", markdown).splitlines():
        if match := HEADING.match(line):
            slug = re.sub(r"[^\w\- ]", "", match.group(2).lower()).replace(" ", "-")
            anchor, n = slug, 0
            while anchor in anchors:
                n += 1
                anchor = f"{slug}-{n}"
            anchors.add(anchor)
    return anchors


def doc_problems(doc: Path, text: str) -> list[str]:
    """What a doc names that does not exist: make targets, CLI flags and relative links.

    Args:
        doc: the file the text comes from (links resolve relative to it).
        text: its Markdown.

    Returns:
        One message per problem, naming the doc and the target, flag or link.
    """
    name = doc.relative_to(REPO) if doc.is_relative_to(REPO) else doc
    problems = []
    code, prose = split_code(text)
    lone_flags = []
    for snippet in code:
        for tokens in commands(snippet):
            for target in make_targets_named(tokens):
                if target not in makefile_targets():
                    problems.append(f"{name}: `make {target}`: no such target in the Makefile")
            if found := program_and_flags(tokens):
                program, flags = found
                for flag in flags:
                    if flag not in accepted_flags(program):
                        problems.append(f"{name}: `{program} {flag}`: no such flag in its --help")
            elif tokens[0].startswith("--"):
                lone_flags.append(FLAG.match(tokens[0]).group(0))
    for flag in lone_flags:  # `--max-images` in a table: some program of this repository must take it
        if flag not in THIRD_PARTY_FLAGS and not any(
            flag in accepted_flags(p) for p in documented_programs()
        ):
            problems.append(f"{name}: `{flag}`: no program the docs run takes this flag")
    for link in LINK.findall(CODE_SPAN.sub("", prose)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):
            continue  # http:, https:, mailto: — not checked offline
        path, _, anchor = link.partition("#")
        target = (doc.parent / path).resolve() if path else doc
        if not target.exists():
            problems.append(f"{name}: link ({link}): {path} does not exist")
        elif anchor and target.suffix == ".md" and anchor not in github_anchors(target.read_text()):
            problems.append(f"{name}: link ({link}): no heading #{anchor} in {target.relative_to(REPO)}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(REPO)))
def test_doc_names_only_existing_targets_flags_and_links(doc: Path) -> None:
    assert doc_problems(doc, doc.read_text()) == []


def test_readme_is_short_and_links_every_docs_page() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert [page for page in DOC_PAGES if f"(docs/{page.name})" not in readme] == []


def test_every_docs_page_starts_with_what_the_reader_gets() -> None:
    for page in DOC_PAGES:
        lines = page.read_text().splitlines()
        assert (
            lines[0].startswith("# ")
            and lines[1] == ""
            and lines[2]
            and not lines[2].startswith(("#", "|", "`"))
        ), f"{page.name} should open with a title, then a sentence saying what the reader gets from it"


def test_the_map_names_the_files_a_newcomer_looks_for() -> None:
    readme = (REPO / "README.md").read_text()
    for path in (
        "core/imaging.py",
        "deploy/__main__.py",
        "helm/deepguard/templates/predictor/inferenceservice.yaml",
    ):
        assert f"`{path}`" in readme and (REPO / path).is_file(), path
    map_paths = [
        span
        for row in readme.split("## Map of the repository", 1)[1].splitlines()
        if row.startswith("| `")
        for span in CODE_SPAN.findall(row.split("|")[1])
        if "/" in span and not re.search(r"[<{*]", span)
    ]
    assert len(map_paths) > 20 and [path for path in map_paths if not (REPO / path).exists()] == []
    assert re.search(r"`core/imaging\.py`.*resiz.*decode_for_model", readme)
    assert re.search(r"`deploy/__main__\.py`.*canary", readme)


def test_every_prometheus_series_is_in_the_serving_docs_table() -> None:
    """docs/serving.md lists each series of both servers (an Info is exported with ``_info``)."""
    doc = (REPO / "docs" / "serving.md").read_text()
    for module in (REPO / "serving" / "metrics.py", REPO / "flask_app" / "metrics.py"):
        for name in sorted(set(re.findall(r'"(deepguard_[a-z_]+)"', module.read_text()))):
            assert f"| `{name}` |" in doc or f"| `{name}_info` |" in doc, f"{name} ({module.name})"


def test_the_checker_reports_a_bogus_target_flag_and_link() -> None:
    text = (
        "Run `DEEPGUARD_DATA=x.zip make run no-such-target`, then\n"
        "```bash\n.venv/bin/python -m deploy --dry-run --no-such-flag  # comment --ignored\n"
        "python bench/serving_bench.py \\\n  --requests 3 --bogus-bench-flag\n"
        "python -m stages.<name> [--workdir DIR] [--no-such-stage-flag]\n```\n"
        "Predictor flags: `--max-images` and `--max-imagez`.\n"
        "See [serving](docs/serving.md#nowhere), [gone](docs/gone.md) and [ok](docs/serving.md#limits).\n"
    )
    problems = doc_problems(REPO / "README.md", text)
    assert sorted(problems) == sorted(
        [
            "README.md: `make no-such-target`: no such target in the Makefile",
            "README.md: `python -m deploy --no-such-flag`: no such flag in its --help",
            "README.md: `python bench/serving_bench.py --bogus-bench-flag`: no such flag in its --help",
            "README.md: `python -m stages.<name> --no-such-stage-flag`: no such flag in its --help",
            "README.md: link (docs/serving.md#nowhere): no heading #nowhere in docs/serving.md",
            "README.md: link (docs/gone.md): docs/gone.md does not exist",
            "README.md: `--max-imagez`: no program the docs run takes this flag",
        ]
    )


# A dotted name in the docs' code whose first part is a section of params.yaml (`training.epochs`,
# `data.source: local`, `--set training.epochs=1`) is a params key, except where it is a chart value (a
# `helm --set` names values.yaml) or something else that happens to start like one.
PARAMS_KEY = re.compile(
    r"(?<![\w./$*'-])([a-z][a-z_]*(?:\.[a-z][a-z_0-9]*)+)(?![\w.*/-])(?:(?::\s+|=)([^\s,;`)]+))?"
)
NOT_PARAMS_KEYS = {
    "monitoring.coreos.com": "the Prometheus operator's API group, in docs/monitoring.md",
    "training.epochz": "the misspelt key of the unknown-key error docs/pipeline.md shows",
    "data.zip": "an archive's name in an error line of docs/pipeline.md",
    "mlflow.keras.load_model": "MLflow's function",
}
HELM_SET = re.compile(r"--set(?:-string|-json)?[ =](?!key\.path=)([a-z][\w.\[\]]*)=")  # not the placeholder
# Upper-case names given a value before a command (`WEB_PORT=5001 make serve`) or named alone in a span
# (`PREDICTOR_URL`) are environment variables, except these, which are the docs' own shell variables,
# other programs' settings or error codes.
ENV_NAME = re.compile(r"[A-Z][A-Z0-9]*_[A-Z0-9_]+|[A-Z][A-Z0-9]+")
NOT_OUR_ENV = {
    "IMG": "a shell variable of docs/serving.md's curl example",
    "TOKEN": "a shell variable of docs/orchestration.md's API example",
    "URL": "a shell variable of docs/kubernetes.md's example",
    "KERAS_BACKEND": "Keras' own, in docs/benchmarks.md",
    "ONEDNN_MAX_CPU_ISA": "oneDNN's own, in docs/benchmarks.md",
    "TF_ENABLE_ONEDNN_OPTS": "TensorFlow's own, in docs/benchmarks.md",
    "AWS_ACCESS_KEY_ID": "the S3 client's own, in the MLflow server's Secret",
    "AWS_SECRET_ACCESS_KEY": "the S3 client's own, in the MLflow server's Secret",
    "MLFLOW_S3_ENDPOINT_URL": "MLflow's own, in the MLflow server's Secret",
    "MLFLOW_BACKEND_STORE_URI": "the chart's MLflow server, in its Secret",
    "INVALID_ARGUMENT": "a gRPC status code",
    "NOT_FOUND": "a gRPC status code",
    "PERMISSION_DENIED": "a gRPC status code",
    "EX_TEMPFAIL": "the sysexits name of exit code 75",
    "O_APPEND": "an open(2) flag",
}


def _leaf_paths(node: object, prefix: str = "") -> set[str]:
    """Every key path of a YAML mapping, sections included; a map value (`{}`) accepts any key below it."""
    paths = set()
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}{key}"
            paths.add(path)
            paths |= _leaf_paths(value, f"{path}.")
            if value == {}:
                paths.add(f"{path}.*")
    return paths


@functools.cache
def chart_value_paths() -> frozenset[str]:
    import yaml

    return frozenset(_leaf_paths(yaml.safe_load((REPO / "helm" / "deepguard" / "values.yaml").read_text())))


def _chart_has(path: str) -> bool:
    parts = re.sub(r"\[\d+\]", "", path).split(".")
    return any(
        ".".join(parts[:n]) + ("" if n == len(parts) else ".*") in chart_value_paths()
        for n in range(len(parts), 0, -1)
    )


def params_problems(doc: Path, text: str) -> list[str]:
    """The params.yaml keys (and `key: value` settings) and chart values a doc names that do not exist.

    A params key named with a value must also load: `core/config.py` validates it as `--set key=value` would.

    Args:
        doc: the file the text comes from.
        text: its Markdown.

    Returns:
        One message per problem, naming the doc and the key.
    """
    sys.path.insert(0, str(REPO))
    from core.config import ConfigError, load_params, load_yaml

    name = doc.relative_to(REPO) if doc.is_relative_to(REPO) else doc
    sections = set(load_yaml((REPO / "params.yaml").read_text()))
    params_paths = _leaf_paths(load_yaml((REPO / "params.yaml").read_text()))
    problems = []
    for snippet in split_code(text)[0]:
        # A helm command's --set (and its block's comments': alternatives) names chart values; a stage's
        # names params; one alone in prose is a chart value unless it starts with a params section.
        helm = any(tokens[0] == "helm" for tokens in commands(snippet))
        chart_keys = {
            key
            for line in snippet.replace("\\\n", " ").splitlines()
            if (helm and line.lstrip().startswith("#")) or line.split()[:1] == ["helm"]
            for key in HELM_SET.findall(line)
        }
        chart_keys |= {key for key in HELM_SET.findall(snippet) if key.split(".")[0] not in sections}
        for chart_key in chart_keys:
            if not _chart_has(chart_key):
                problems.append(f"{name}: `--set {chart_key}=`: no such value in helm/deepguard/values.yaml")
        for match in PARAMS_KEY.finditer(snippet):
            key, value = match.groups()
            if key.split(".")[0] not in sections or key in NOT_PARAMS_KEYS or key in chart_keys:
                continue
            if key not in params_paths:
                if not _chart_has(key):  # `mlflow.` starts params keys and chart values alike
                    problems.append(f"{name}: `{key}`: no such key in params.yaml")
            elif value and value != "..." and not value.startswith("<"):
                try:
                    load_params(overrides=[f"{key}={value}"])
                except ConfigError as exc:
                    problems.append(f"{name}: `{key}: {value}`: {exc}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(REPO)))
def test_doc_names_only_existing_params_keys_and_chart_values(doc: Path) -> None:
    assert params_problems(doc, doc.read_text()) == []


@functools.cache
def variables_read() -> str:
    """The text of every file that may read an environment variable: code, Makefile, chart, images, tools."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return "\n".join(
        (REPO / path).read_text(errors="replace")
        for path in files.split()
        # This file names bogus variables in its own test of the check.
        if not path.endswith(".md") and (REPO / path).is_file() and path != "tests/test_docs.py"
    )


def env_problems(doc: Path, text: str) -> list[str]:
    """The environment variables a doc tells the user to set or names that nothing in the repository reads."""
    name = doc.relative_to(REPO) if doc.is_relative_to(REPO) else doc
    named = set()
    for snippet in split_code(text)[0]:
        if ENV_NAME.fullmatch(snippet.strip("${}")) and "_" in snippet:
            named.add(snippet.strip("${}"))
        for tokens in commands(snippet):
            for token in tokens:
                if not ASSIGNMENT.match(token):
                    break
                if ENV_NAME.fullmatch(token.partition("=")[0]):
                    named.add(token.partition("=")[0])
    read = variables_read()
    return [
        f"{name}: `{variable}`: no code, Makefile, chart or image of the repository reads it"
        for variable in sorted(named - set(NOT_OUR_ENV))
        # Read: as a string ("NAME", 'NAME', ${NAME}, $(NAME)), or assigned in the Makefile (NAME ?= ...).
        if not re.search(rf"[\"'{{(]{variable}\b|^{variable}\s*[?:]?=", read, re.MULTILINE)
    ]


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(REPO)))
def test_doc_names_only_environment_variables_something_reads(doc: Path) -> None:
    assert env_problems(doc, doc.read_text()) == []


def test_the_checker_reports_a_bogus_params_key_value_chart_value_and_variable() -> None:
    text = (
        "Set `training.epochx` or `training.epochs: 0`, not `training.epochs: 3` or `data.source: local`;\n"
        "```bash\nhelm install deepguard helm/deepguard --set predictor.gpu.count=1 --set predictor.gpuz=1\n"
        "python -m stages.train --set training.batch_size=64 --set split.seedz=1\n"
        "DEEPGUARD_NO_SUCH=1 WEB_PORT=5001 make serve\n```\n"
        "`monitoring.coreos.com` is an API group; `DEEPGUARD_ALSO_NONE` and `PREDICTOR_URL` are variables.\n"
    )
    assert sorted(params_problems(REPO / "README.md", text)) == sorted(
        [
            "README.md: `training.epochx`: no such key in params.yaml",
            "README.md: `split.seedz`: no such key in params.yaml",
            "README.md: `--set predictor.gpuz=`: no such value in helm/deepguard/values.yaml",
            f"README.md: `training.epochs: 0`: {_config_error('training.epochs=0')}",
        ]
    )
    assert sorted(env_problems(REPO / "README.md", text)) == [
        "README.md: `DEEPGUARD_ALSO_NONE`: no code, Makefile, chart or image of the repository reads it",
        "README.md: `DEEPGUARD_NO_SUCH`: no code, Makefile, chart or image of the repository reads it",
    ]


def _config_error(override: str) -> str:
    from core.config import ConfigError, load_params

    with pytest.raises(ConfigError) as caught:
        load_params(overrides=[override])
    return str(caught.value)


# Folders the pipeline, the servers and the tools create: a path under them is an output, not a file to find.
GENERATED = {"data", "models", "reports", "mlruns", "monitoring", ".airflow", ".cache", "dvc_plots", ".venv"}
GENERATED_INSIDE = (".dvc/cache", ".dvc/tmp")  # DVC's own, in a folder the repository has (.dvc/config)
REPO_PATH = re.compile(r"[A-Za-z0-9_.\-/]+")


def path_problems(doc: Path, text: str) -> list[str]:
    """The repository paths a doc's inline code names (`serving/litert.py`, `helm/ci/`) that are missing.

    A path counts when its first part is a file or folder at the top of the repository and not an output
    folder; `kubectl ... deploy/<name>` names a Deployment, not the `deploy/` package.
    """
    name = doc.relative_to(REPO) if doc.is_relative_to(REPO) else doc
    top = {path.name for path in REPO.iterdir()} - GENERATED
    problems = []
    for span in split_code(text)[0]:
        if "\n" in span or span.startswith("kubectl"):
            continue
        for token in REPO_PATH.findall(re.sub(r"\S*[{}*<>$]\S*", " ", span)):
            path = token.rstrip(".,:")
            if path.startswith(GENERATED_INSIDE):
                continue
            if "/" in path and path.split("/")[0] in top and not (REPO / path).exists():
                problems.append(f"{name}: `{path}`: no such file or folder in the repository")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(REPO)))
def test_doc_names_only_existing_repository_paths(doc: Path) -> None:
    assert path_problems(doc, doc.read_text()) == []


def test_the_checker_reports_a_missing_repository_path() -> None:
    text = (
        "See `serving/litert.py`, `serving/tflite.py`, `helm/deepguard/ci/` and `images/<name>/Dockerfile`;\n"
        "outputs: `reports/metrics.json`; `kubectl -n deepguard logs deploy/deepguard-web`.\n"
    )
    assert path_problems(REPO / "README.md", text) == [
        "README.md: `serving/tflite.py`: no such file or folder in the repository"
    ]
