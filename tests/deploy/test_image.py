"""docker/Dockerfile and .dockerignore, checked without a Docker daemon (CI has none): the structure
the deployment relies on, agreement with pyproject.toml and docker-compose.yml, and a real build of
the wheel that the image installs, from exactly the files the Dockerfile copies."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comments and parser directives dropped."""
    out, current = [], ""
    for line in text.splitlines():
        if not current and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        current = ""
    return out


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text(encoding="utf-8"))


def stage(steps: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    """The instructions of one build stage (`FROM ... AS name` up to the next FROM)."""
    out, inside = [], False
    for instr, args in steps:
        if instr == "FROM":
            inside = args.lower().endswith(f" as {name}")
        elif inside:
            out.append((instr, args))
    assert out, f"no stage {name!r}"
    return out


def env_of(steps: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for instr, args in steps:
        if instr == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def copy_sources(steps: list[tuple[str, str]]) -> list[str]:
    """Sources of the COPY instructions that read the build context (not `--from=` another stage)."""
    out = []
    for instr, args in steps:
        if instr == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            if not re.search(r"--from=", args):
                out += words[:-1]
    return out


def test_multi_stage_slim_python_311(steps) -> None:
    froms = [args for instr, args in steps if instr == "FROM"]
    assert len(froms) >= 2, "multi-stage: build the venv in one stage, copy it into a clean one"
    args = dict(a.split("=", 1) for instr, a in steps if instr == "ARG" and "=" in a)
    bases = {re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], f.split()[0]) for f in froms}
    assert bases == {"python:3.11-slim-bookworm"}
    runtime = stage(steps, "runtime")
    assert ("COPY", "--from=build /opt/venv /opt/venv") in runtime


def test_cpu_only_torch_pinned_like_the_package(steps) -> None:
    (torch_pin,) = re.findall(r'"(torch==[^"]+)"', (REPO / "pyproject.toml").read_text())
    runs = [args for instr, args in stage(steps, "build") if instr == "RUN"]
    # the wheel index is a build argument whose default is the CPU one (compose's gpu profile passes a CUDA one)
    args = dict(a.split("=", 1) for instr, a in steps if instr == "ARG" and "=" in a)
    torch_runs = [re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], r) for r in runs if "torch" in r]
    assert torch_runs == [f"pip install --index-url https://download.pytorch.org/whl/cpu {torch_pin}"]
    # torch is installed before the package, so `pip install .` finds its pin satisfied
    first_torch = next(i for i, r in enumerate(runs) if "torch" in r)
    assert first_torch < next(i for i, r in enumerate(runs) if r.startswith("pip install ."))


def test_runs_as_a_non_root_user(steps) -> None:
    users = [args for instr, args in stage(steps, "runtime") if instr == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")


def test_no_api_key_baked_in_and_serve_binds_all_addresses(steps) -> None:
    from service.cli import build_parser

    text = DOCKERFILE.read_text()
    assert not re.search(r"^\s*(ENV|ARG)\b.*RNNLM_API_KEY", text, re.M)
    entrypoint = [json.loads(a) for i, a in steps if i == "ENTRYPOINT"][-1]
    cmd = [json.loads(a) for i, a in steps if i == "CMD"][-1]
    assert entrypoint == ["rnnlm"]
    args = build_parser().parse_args(cmd)
    assert args.command == "serve" and args.host == "0.0.0.0" and args.api_key is None and not args.insecure


def test_paths_are_the_compose_volume_mount_points(steps, compose) -> None:
    env = env_of(stage(steps, "runtime"))
    for name in ("api", "worker"):
        svc_env = compose["services"][name]["environment"]
        assert env["RNNLM_CHECKPOINTS"] == svc_env["RNNLM_CHECKPOINTS"]
        assert env["RNNLM_JOBS_DB"] == svc_env["RNNLM_JOBS_DB"]
    shipped = [a for i, a in stage(steps, "runtime") if i == "COPY" and a.split()[-2] == "checkpoints/"]
    assert shipped and shipped[0].split()[-1].rstrip("/") == env["RNNLM_CHECKPOINTS"]


def test_image_healthcheck_probes_health(steps, stack, proc_tools) -> None:
    """The image's HEALTHCHECK command passes against a live server and fails when none listens."""
    (check,) = [a for i, a in steps if i == "HEALTHCHECK"]
    command = json.loads(check[check.index("CMD") + 3:].strip())
    program, *args = command
    assert program == "python" and "/health" in args[-1]
    ok = subprocess.run([sys.executable, *args], env=proc_tools.clean_env(RNNLM_PORT=str(stack.api_port)),
                        capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert subprocess.run([sys.executable, *args], env=proc_tools.clean_env(RNNLM_PORT="9"), capture_output=True,
                          timeout=30).returncode != 0


# ---- .dockerignore -------------------------------------------------------------------------------
def _pattern(p: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over slash-separated paths."""
    p = p.strip("/")
    out, i = "", 0
    while i < len(p):
        if p.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif p.startswith("**", i):
            out, i = out + ".*", i + 2
        elif p[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif p[i] == "?":
            out, i = out + "[^/]", i + 1
        elif p[i] == "[":
            j = p.index("]", i)
            out, i = out + p[i:j + 1].replace("[!", "[^"), j + 1
        else:
            out, i = out + re.escape(p[i]), i + 1
    return re.compile(out)


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not negate
    return result


@pytest.fixture(scope="module")
def rules() -> list[tuple[bool, re.Pattern[str]]]:
    out = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((line.startswith("!"), _pattern(line.lstrip("!"))))
    return out


def test_dockerignore_keeps_what_the_dockerfile_copies(steps, rules) -> None:
    sources = copy_sources(steps)
    assert set(sources) >= {"pyproject.toml", "README.md", "models/", "service/", "checkpoints/"}
    for src in sources:
        path = REPO / src
        if src == "checkpoints/" and not path.exists():
            continue  # git keeps no empty folder: it appears with the first shipped model
        assert path.exists(), src
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        kept = [f for f in files if not ignored(f.relative_to(REPO).as_posix(), rules)]
        assert kept or src == "checkpoints/", f"{src} is copied but .dockerignore drops all of it"
        for f in files:
            rel = f.relative_to(REPO).as_posix()
            if src == "checkpoints/" and rel.split("/")[1] not in ("README.md", "lstm", "gru", "student"):
                assert ignored(rel, rules), rel  # a model trained into the working tree stays out of the image
                continue
            assert ignored(rel, rules) == ("__pycache__" in rel or rel.endswith(".pyc")), rel


def test_dockerignore_leaves_out_everything_else(steps, rules) -> None:
    copied = {s.rstrip("/") for s in copy_sources(steps)}
    for entry in os.listdir(REPO):  # .venv, .git, tests, bench, runs, .env, jobs.db, caches, ...
        if entry not in copied:
            assert ignored(entry, rules), f"{entry} would be sent to the Docker daemon"
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", ".env", "runs/x/state.pt", "jobs.db",
                 ".pytest_cache/v/x", "service/__pycache__/cli.cpython-311.pyc", "data/wikitext-2/train.txt",
                 "checkpoints/.lstm.tmp-1234/model.safetensors", "rnnlm_serve.egg-info/PKG-INFO",
                 "checkpoints/my-gru/model.safetensors", "checkpoints/README.md.bak"):
        assert ignored(path, rules), path
    for path in ("pyproject.toml", "README.md", "service/cli.py", "models/engine.py",
                 "checkpoints/lstm/model.safetensors", "checkpoints/student/vocab.txt", "checkpoints/README.md",
                 "rnnlm_client/client.py"):
        assert not ignored(path, rules), path


def test_the_copied_files_build_the_installed_package(steps, rules, tmp_path: Path) -> None:
    """`pip install .` in the build stage: a wheel built from only the COPYed files (minus .dockerignore)
    holds every module of models/ and service/ and the `rnnlm` command."""
    src = tmp_path / "src"
    for source in copy_sources(stage(steps, "build")):
        path = REPO / source
        for f in ([path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]):
            rel = f.relative_to(REPO).as_posix()
            if not ignored(rel, rules):
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, src / rel)
    # with build isolation, as in the image (it fetches the build backend pyproject.toml names from PyPI)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir",
                           str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("rnnlm_serve-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    modules = {p.relative_to(REPO).as_posix() for pkg in ("models", "service") for p in (REPO / pkg).rglob("*.py")
               if "__pycache__" not in p.parts}
    assert modules - names == set(), "modules the image would lack (add their packages to pyproject.toml)"
    assert re.search(r"^rnnlm\s*=\s*service\.cli:main$", entry_points, re.M)
