"""The README's local-Lambda steps, as written, for a user with a fresh home directory: no
AWS credentials, no Dask config, no secret. Three separate processes, as a person would
run them: the server, ``deploy``, a script."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dask_serverless.backends.aws_lambda.local_server import answers
from dask_serverless.storage.embedded import free_port

SCRIPT = """
import dask
from dask import delayed
from dask_serverless import serverless_get

parts = [delayed(pow)(i, 2) for i in range(10)]
print(dask.compute(delayed(sum)(parts), scheduler=serverless_get)[0])
"""


def _fresh_env(home: Path) -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["HOME"] = str(home)
    # only the package build cache is shared (speed: the zip does not depend on HOME)
    env["DASK_SERVERLESS_CACHE"] = os.environ.get("DASK_SERVERLESS_CACHE") or str(
        Path.home() / ".cache" / "dask-serverless")
    return env


def test_readme_local_lambda_steps_work_in_a_fresh_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = _fresh_env(home)
    cli = os.path.join(os.path.dirname(sys.executable), "dask-serverless")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([cli, "local-lambda", "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):
            if answers(url) or server.poll() is not None:
                break
            time.sleep(0.1)
        assert server.poll() is None, server.stdout.read()
        deployed = subprocess.run([cli, "deploy", "--endpoint-url", url, "--memory", "1024"],
                                  env=env, capture_output=True, text=True, timeout=600)
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        assert "stored it in" in deployed.stdout
        secret_file = home / ".config" / "dask" / "dask-serverless-secret.yaml"
        assert (secret_file.stat().st_mode & 0o777) == 0o600
        secret = secret_file.read_text().split("secret:")[1].strip()
        assert secret not in deployed.stdout + deployed.stderr  # never printed

        run_env = {**env, "DASK_SERVERLESS__BACKEND": "lambda",
                   "DASK_SERVERLESS__LAMBDA__ENDPOINT_URL": url}
        script = tmp_path / "script.py"
        script.write_text(SCRIPT)
        ran = subprocess.run([sys.executable, str(script)], env=run_env, capture_output=True,
                             text=True, timeout=600, cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert ran.stdout.split()[-1] == "285"
    finally:
        server.terminate()
        server.wait(timeout=60)
    # the credentials the server published for this user are gone with it
    assert not list((home / ".config" / "dask").glob("dask-serverless-local-lambda-*"))


def test_deploy_refuses_a_secret_on_the_command_line():
    from dask_serverless import cli

    with pytest.raises(SystemExit, match="--secret-file"):
        cli.main(["deploy", "--memory", "1024", "--endpoint-url", "http://127.0.0.1:1",
                  "--secret", "visible-to-ps"])
