"""The Dockerfile builds the server we test: its base image's Triton release is the tritonserver
version the end-to-end tests run against (asked of the running server itself), the client wheel
matches, and its COPY/HEALTHCHECK/CMD/EXPOSE agree with the repository and with Triton.

No Docker engine runs here, so the image itself is not built; these checks read the Dockerfile.
"""
from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"

# NGC container release (YY.MM) -> Triton Inference Server version it ships, from NVIDIA's
# framework support matrix / release notes. Monthly releases: 24.01 shipped 2.42.0 and each month
# adds one minor version. Extend the table when moving the base image.
TRITON_RELEASES = {
    "24.01": "2.42.0", "24.02": "2.43.0", "24.03": "2.44.0", "24.04": "2.45.0",
    "24.05": "2.46.0", "24.06": "2.47.0", "24.07": "2.48.0", "24.08": "2.49.0",
    "24.09": "2.50.0", "24.10": "2.51.0", "24.11": "2.52.0", "24.12": "2.53.0",
    "25.01": "2.54.0", "25.02": "2.55.0",
}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    result, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue   # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, args = current.partition(" ")
        result.append((word.upper(), args.strip()))
        current = ""
    assert not current, "Dockerfile ends inside a line continuation"
    return result


def args_of(word: str) -> list[str]:
    return [a for w, a in instructions() if w == word]


def base_release() -> str:
    [image] = args_of("FROM")
    m = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d\d\.\d\d)-py3(?:\s+AS\s+\S+)?", image, re.I)
    assert m, f"unexpected base image {image!r}"
    return m.group(1)


def test_release_table_is_consistent():
    for release, version in TRITON_RELEASES.items():
        yy, mm = map(int, release.split("."))
        assert version == f"2.{42 + (yy - 24) * 12 + (mm - 1)}.0", release


def test_base_image_is_the_server_we_test_against(server):
    """The running test server (the nvidia-pytriton wheel's tritonserver) reports its version;
    the base image's release must ship exactly that one."""
    with urllib.request.urlopen(f"http://{server.http_url}/v2", timeout=10) as r:
        meta = json.load(r)
    assert meta["name"] == "triton"
    assert TRITON_RELEASES[base_release()] == meta["version"], (base_release(), meta["version"])


def test_tritonclient_matches_the_server_release():
    server_version = TRITON_RELEASES[base_release()]
    requirements = (REPO_ROOT / "requirements.txt").read_text()
    m = re.search(r"^tritonclient(?:\[[^\]]*\])?==(\S+)", requirements, re.M)
    assert m and m.group(1) == server_version, "requirements.txt tritonclient"
    installs = " ".join(a for a in args_of("RUN") if "pip install" in a)
    m = re.search(r"tritonclient(?:\[[^\]]*\])?==([\d.]+)", installs)
    assert m and m.group(1) == server_version, "Dockerfile tritonclient"
    from importlib.metadata import version
    assert version("tritonclient") == server_version, "installed tritonclient"


def test_every_copy_source_exists():
    copies = args_of("COPY") + args_of("ADD")
    assert copies
    for args in copies:
        if args.startswith("["):
            parts = json.loads(args)
        else:
            parts = args.split()
        if any(p.startswith("--from") for p in parts):
            continue   # from another build stage
        sources = [p for p in parts if not p.startswith("--")][:-1]
        assert sources, args
        for src in sources:
            matches = list(REPO_ROOT.glob(src))
            assert matches, f"COPY source {src!r} does not exist in the repository"


def test_model_repository_is_copied_where_cmd_serves_it():
    workdir = args_of("WORKDIR")[-1]
    [cmd] = args_of("CMD")
    cmd = json.loads(cmd)
    assert cmd[:3] == ["python3", "-m", "tools.serve"]
    repo = cmd[cmd.index("--model-repository") + 1]
    assert repo == f"{workdir}/model_repository"
    copied = {a.split()[-1].rstrip("/") for a in args_of("COPY")}
    assert "./model_repository" in copied or repo in copied
    assert (REPO_ROOT / "model_repository" / "llm" / "config.pbtxt").is_file()


def test_healthcheck_hits_ready_endpoint():
    [health] = args_of("HEALTHCHECK")
    # The model's ready endpoint: with --unload-on-engine-failure (CMD) it turns 400 when the
    # engine dies, while /v2/health/ready stays 200.
    assert re.search(r"\bCMD\b.*localhost:8000/v2/models/llm/ready", health), health
    [cmd] = args_of("CMD")
    assert "--unload-on-engine-failure" in json.loads(cmd)
    start = re.search(r"--start-period=(\d+)s", health)
    assert start and int(start.group(1)) >= 120, "model loading needs a long start period"


def test_exposes_triton_ports():
    exposed = {p.split("/")[0] for a in args_of("EXPOSE") for p in a.split()}
    assert exposed == {"8000", "8001", "8002"}


@pytest.mark.parametrize("package", ["numpy", "safetensors", "tokenizers"])
def test_runtime_pins_agree_with_requirements(package):
    """Packages the model imports at runtime: the image pins what we test with (numpy: <2 in both,
    the 2.51 Python backend sends empty numeric outputs with numpy 2)."""
    requirements = (REPO_ROOT / "requirements.txt").read_text()
    installs = " ".join(a for a in args_of("RUN") if "pip install" in a)
    req = re.search(rf"^{package}==(\S+)", requirements, re.M).group(1)
    if package == "numpy":
        assert int(req.split(".")[0]) < 2 and '"numpy<2"' in installs
    else:
        assert f"{package}=={req}" in installs
