"""Deployment packages for the worker functions: a zip, or a container-image context.

The zip holds this package, the worker's runtime dependencies pinned to the versions this
client runs (pickles must match on both sides) and the user's requirements, installed for
the Lambda platform (``manylinux2014_x86_64`` wheels for the runtime's Python) so tasks
never download anything at run time. boto3 is not bundled: the Lambda runtime has it.
Zips are reproducible (sorted entries, fixed timestamps) and cached by content, so a
re-deploy of unchanged inputs uploads nothing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import dask_serverless

logger = logging.getLogger(__name__)

WORKER_DEPENDENCIES = ("dask", "cloudpickle", "redis", "toolz")
HANDLER = "dask_serverless.backends.aws_lambda.handler.lambda_handler"
MAX_ZIP_BYTES = 50 * 2**20  # direct upload limit
MAX_UNZIPPED_BYTES = 250 * 2**20
BASE_IMAGE = "public.ecr.aws/lambda/python"
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)


class PackagingError(RuntimeError):
    """The deployment package cannot be built or is too large for Lambda."""


@dataclass(frozen=True, slots=True)
class Package:
    path: Path
    sha256: str  # base64, as Lambda reports CodeSha256
    size: int
    unzipped_size: int
    files: int
    cached: bool


def runtime_python() -> str:
    """The Python of this client ("3.11"): workers must run the same one."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def worker_requirements() -> list[str]:
    """The worker's dependencies pinned to the versions installed here."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in WORKER_DEPENDENCIES]


def _source_dir() -> Path:
    return Path(dask_serverless.__file__).parent


def _source_files() -> list[Path]:
    root = _source_dir()
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def build_zip(requirements_file: str | None = None, *, platform: str = "lambda",
              python_version: str | None = None, cache_dir: str | None = None) -> Package:
    """Build (or reuse) the zip; ``platform`` is ``"lambda"`` or ``"local"`` (wheels for
    this machine, enough for the local Lambda API server)."""
    if platform not in ("lambda", "local"):
        raise PackagingError(f"platform {platform!r} must be 'lambda' or 'local'")
    python_version = python_version or runtime_python()
    reqs = worker_requirements()
    user_reqs = Path(requirements_file).read_bytes() if requirements_file else b""
    digest = hashlib.sha256()
    for part in (platform, python_version, *reqs):
        digest.update(part.encode() + b"\0")
    digest.update(user_reqs + b"\0")
    root = _source_dir()
    for f in _source_files():
        digest.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    cache = Path(cache_dir or os.environ.get("DASK_SERVERLESS_CACHE")
                 or Path.home() / ".cache" / "dask-serverless") / "packages"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"worker-{digest.hexdigest()[:24]}.zip"
    if target.exists():
        return _describe(target, cached=True)
    with tempfile.TemporaryDirectory(prefix="dask-serverless-build-") as tmp:
        build = Path(tmp) / "package"
        _pip_install(build, reqs, requirements_file, platform, python_version)
        shutil.copytree(root, build / "dask_serverless",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        partial = Path(tmp) / "package.zip"
        _write_zip(build, partial)
        shutil.move(partial, target)
    package = _describe(target, cached=False)
    logger.info("built %s: %.1f MB zipped, %.1f MB unzipped, %d files", target,
                package.size / 2**20, package.unzipped_size / 2**20, package.files)
    if package.size > MAX_ZIP_BYTES or package.unzipped_size > MAX_UNZIPPED_BYTES:
        target.unlink()
        raise PackagingError(
            f"the deployment package is {package.size / 2**20:.1f} MB zipped, "
            f"{package.unzipped_size / 2**20:.1f} MB unzipped; Lambda allows "
            f"{MAX_ZIP_BYTES // 2**20} MB / {MAX_UNZIPPED_BYTES // 2**20} MB: use a container "
            "image (`dask-serverless dockerfile`, then `deploy --image-uri`)")
    return package


def _pip_install(build: Path, reqs: list[str], requirements_file: str | None, platform: str,
                 python_version: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-compile", "--target", str(build), *reqs]
    if requirements_file:
        cmd += ["-r", requirements_file]
    if platform == "lambda":
        cmd += ["--platform", "manylinux2014_x86_64", "--implementation", "cp",
                "--python-version", python_version, "--only-binary=:all:"]
    logger.info("installing worker dependencies: %s", " ".join(cmd[3:]))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PackagingError(f"pip could not install the worker's dependencies "
                             f"({' '.join(reqs)}"
                             f"{', -r ' + requirements_file if requirements_file else ''}):\n"
                             f"{proc.stderr[-3000:]}")
    for junk in ("bin", "__pycache__"):
        shutil.rmtree(build / junk, ignore_errors=True)


def _write_zip(build: Path, path: Path) -> None:
    files = sorted(p for p in build.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        for f in files:
            info = zipfile.ZipInfo(str(f.relative_to(build)), _FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, f.read_bytes())


def _describe(path: Path, cached: bool) -> Package:
    import base64

    data = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
    return Package(path, base64.b64encode(hashlib.sha256(data).digest()).decode(), len(data),
                   sum(i.file_size for i in infos), len(infos), cached)


def write_image_context(directory: str, requirements_file: str | None = None,
                        python_version: str | None = None) -> Path:
    """Write a Docker build context for a container-image function (packages beyond the
    zip limits): Lambda's Python base image (it includes awslambdaric), the pinned worker
    dependencies, the user's requirements and this package. Returns the Dockerfile."""
    python_version = python_version or runtime_python()
    ctx = Path(directory)
    ctx.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(ctx / "dask_serverless", ignore_errors=True)
    shutil.copytree(_source_dir(), ctx / "dask_serverless",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    lines = worker_requirements()
    if requirements_file:
        lines += [ln for ln in Path(requirements_file).read_text().splitlines() if ln.strip()]
    (ctx / "requirements.txt").write_text("\n".join(lines) + "\n")
    dockerfile = ctx / "Dockerfile"
    dockerfile.write_text(
        f"# dask-serverless worker image: docker build -t IMAGE . && docker push IMAGE,\n"
        f"# then: dask-serverless deploy --image-uri IMAGE --memory ...\n"
        f"FROM {BASE_IMAGE}:{python_version}\n"
        "COPY requirements.txt ${LAMBDA_TASK_ROOT}/\n"
        "RUN pip install --no-cache-dir -r ${LAMBDA_TASK_ROOT}/requirements.txt "
        "--target ${LAMBDA_TASK_ROOT}\n"
        "COPY dask_serverless ${LAMBDA_TASK_ROOT}/dask_serverless\n"
        f'CMD ["{HANDLER}"]\n')
    return dockerfile
