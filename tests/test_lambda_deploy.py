"""``deploy`` / ``destroy`` against moto (IAM + Lambda control plane) and, through the CLI,
against the local Lambda API server; the deployment package and the image context."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import boto3
import dask
import pytest
from dask import delayed
from moto import mock_aws

from dask_serverless import cli, serverless_get, session
from dask_serverless.backends.aws_lambda import LambdaSettings, packaging
from dask_serverless.backends.aws_lambda.deploy import DeployOptions, deploy, destroy
from dask_serverless.backends.aws_lambda.local_server import start_process
from dask_serverless.backends.aws_lambda.settings import make_client
from dask_serverless.plan import PlanError
from dask_serverless.storage import serialize


@pytest.fixture
def aws(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield boto3.client("lambda", region_name="us-east-1"), \
            boto3.client("iam", region_name="us-east-1")


def test_deploy_is_idempotent_and_destroy_cleans_up_on_moto(aws):
    lam, iam = aws
    settings = LambdaSettings(function_prefix="ds-moto", region="us-east-1")
    lines: list[str] = []
    done = deploy(DeployOptions([512, 1024], settings), say=lines.append)
    assert [(d["function"], d["action"]) for d in done] == [("ds-moto-512", "created"),
                                                           ("ds-moto-1024", "created")]
    assert "role ds-moto-worker: created" in lines[0]
    role = iam.get_role(RoleName="ds-moto-worker")["Role"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "lambda.amazonaws.com"}
    policy = iam.get_role_policy(RoleName="ds-moto-worker",
                                PolicyName="dask-serverless-worker")
    assert policy["PolicyDocument"]["Statement"][1]["Resource"] == \
        "arn:aws:lambda:*:*:function:ds-moto-*"
    conf = lam.get_function(FunctionName="ds-moto-1024")["Configuration"]
    assert (conf["MemorySize"], conf["Timeout"], conf["Handler"], conf["Role"]) == \
        (1024, 900, packaging.HANDLER, role["Arn"])
    assert conf["Environment"]["Variables"] == {
        "DASK_SERVERLESS__LAMBDA__FUNCTION_PREFIX": "ds-moto",
        "DASK_SERVERLESS__SECRET": serialize.secret()}
    async_conf = lam.get_function_event_invoke_config(FunctionName="ds-moto-1024")
    assert async_conf["MaximumRetryAttempts"] == 0  # the client retries, Lambda must not
    assert async_conf["MaximumEventAgeInSeconds"] == 3600  # serverless.deadline

    again = deploy(DeployOptions([512, 1024], settings), say=lines.append)
    assert [d["action"] for d in again] == ["unchanged", "unchanged"]
    longer = LambdaSettings(function_prefix="ds-moto", region="us-east-1", timeout=300)
    changed = deploy(DeployOptions([1024], longer, redis_url="rediss://:pw@cache:6379/0"),
                     say=lines.append)
    assert changed[0]["action"] == "updated configuration (Description, Environment, Timeout)"
    conf = lam.get_function(FunctionName="ds-moto-1024")["Configuration"]
    assert conf["Timeout"] == 300
    assert conf["Environment"]["Variables"]["DASK_SERVERLESS__REDIS_URL"] == \
        "rediss://:pw@cache:6379/0"

    lam.create_function(FunctionName="ds-moto-other", Runtime="python3.11", Role=role["Arn"],
                        Handler="x.y", Code={"ZipFile": b"PK\x05\x06" + b"\0" * 18})
    assert sorted(destroy(settings, say=lines.append)) == ["ds-moto-1024", "ds-moto-512"]
    assert [f["FunctionName"] for f in lam.list_functions()["Functions"]] == ["ds-moto-other"]
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_role(RoleName="ds-moto-worker")
    assert destroy(settings, say=lines.append) == []


def test_deploy_container_image_on_moto(aws):
    lam, _ = aws
    settings = LambdaSettings(function_prefix="ds-img", region="us-east-1")
    uri = "123456789012.dkr.ecr.us-east-1.amazonaws.com/ds-worker:1"
    done = deploy(DeployOptions([2048], settings, image_uri=uri), say=lambda _: None)
    assert done[0]["action"] == "created"
    got = lam.get_function(FunctionName="ds-img-2048")
    assert got["Configuration"]["PackageType"] == "Image"
    assert got["Code"]["ImageUri"] == uri


def test_bad_memory_is_rejected_before_anything_is_created():
    with pytest.raises(PlanError, match="memory_mb=64"):
        deploy(DeployOptions([64], LambdaSettings(region="us-east-1")))
    with pytest.raises(SystemExit, match="comma-separated"):
        cli.main(["deploy", "--memory", "1GB", "--endpoint-url", "http://127.0.0.1:1"])


@pytest.fixture
def local_lambda_process():
    """``dask-serverless local-lambda`` in a subprocess: yields its URL."""
    proc, url = start_process("--max-containers", "2")
    client = make_client("lambda", LambdaSettings(endpoint_url=url, region="us-east-1"))
    yield url, client
    proc.terminate()
    proc.wait(timeout=30)


def test_cli_deploy_compute_destroy_on_local_server(local_lambda_process, real_redis,
                                                    capsys, tmp_path):
    url, client = local_lambda_process
    args = ["--endpoint-url", url, "--prefix", "ds-cli", "--region", "us-east-1"]
    assert cli.main(["deploy", "--memory", "512,1024", *args]) == 0
    out = capsys.readouterr().out
    assert "function ds-cli-512: created" in out and "function ds-cli-1024: created" in out
    for name in ("ds-cli-512", "ds-cli-1024"):
        async_conf = client.get_function_event_invoke_config(FunctionName=name)
        assert (async_conf["MaximumRetryAttempts"], async_conf["MaximumEventAgeInSeconds"]) \
            == (0, 3600)
    assert cli.main(["deploy", "--memory", "512,1024", *args]) == 0
    assert capsys.readouterr().out.count(": unchanged") == 2
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("tqdm\n")
    assert cli.main(["deploy", "--memory", "512", "--requirements", str(reqs), *args]) == 0
    assert "function ds-cli-512: updated code" in capsys.readouterr().out

    with dask.config.set({"serverless.backend": "lambda", "serverless.lambda.endpoint-url": url,
                          "serverless.lambda.function-prefix": "ds-cli",
                          "serverless.lambda.region": "us-east-1"}):
        try:
            tqdm_version = delayed(lambda: __import__("tqdm").__version__)()
            parts = [delayed(pow)(i, 2) for i in range(10)]
            got = dask.compute(delayed(sum)(parts), tqdm_version, scheduler=serverless_get,
                               memory=512)
        finally:
            session.reset_backend("lambda")
    import tqdm

    assert got == (285, tqdm.__version__)
    assert cli.main(["destroy", *args]) == 0
    assert "function ds-cli-1024: deleted" in capsys.readouterr().out
    assert client.list_functions()["Functions"] == []


def test_local_server_event_invoke_config(local_lambda_process):
    url, client = local_lambda_process
    settings = LambdaSettings(function_prefix="ds-async", endpoint_url=url,
                              region="us-east-1")
    with dask.config.set({"serverless.deadline": 600}):
        deploy(DeployOptions([256], settings), lambda_client=client, say=lambda _: None)
    conf = client.get_function_event_invoke_config(FunctionName="ds-async-256")
    assert (conf["MaximumRetryAttempts"], conf["MaximumEventAgeInSeconds"]) == (0, 600)
    assert conf["FunctionArn"].endswith(":function:ds-async-256")
    with pytest.raises(client.exceptions.InvalidParameterValueException,
                       match="MaximumRetryAttempts"):
        client.put_function_event_invoke_config(FunctionName="ds-async-256",
                                                MaximumRetryAttempts=5)
    client.delete_function_event_invoke_config(FunctionName="ds-async-256")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_function_event_invoke_config(FunctionName="ds-async-256")
    client.put_function_event_invoke_config(FunctionName="ds-async-256",
                                            MaximumRetryAttempts=0)
    assert destroy(settings, lambda_client=client, say=lambda _: None) == ["ds-async-256"]
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_function_event_invoke_config(FunctionName="ds-async-256")


def test_zip_is_self_contained_and_reproducible(tmp_path):
    first = packaging.build_zip(platform="lambda", cache_dir=str(tmp_path / "a"))
    second = packaging.build_zip(platform="lambda", cache_dir=str(tmp_path / "b"))
    assert not first.cached and first.sha256 == second.sha256
    assert packaging.build_zip(platform="lambda", cache_dir=str(tmp_path / "a")).cached
    root = tmp_path / "task"
    with zipfile.ZipFile(first.path) as z:
        assert not [n for n in z.namelist() if "__pycache__" in n or n.startswith("boto")]
        z.extractall(root)
    # -S: no site-packages, so every import must come from the package itself
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]);"
            "import dask, redis, cloudpickle, toolz, yaml;"
            "import dask_serverless.backends.aws_lambda.handler as h;"
            "mods = [dask, redis, cloudpickle, toolz, yaml, h];"
            "assert all(m.__file__.startswith(sys.argv[1]) for m in mods), mods;"
            "print(json.dumps(h.lambda_handler({'ds': 1, 'warmup': True}, None)))")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(root)], capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out) == {"warmup": True, "cold": True}


def test_image_context(tmp_path):
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("scipy==1.14.1\n")
    dockerfile = packaging.write_image_context(str(tmp_path / "ctx"), str(reqs))
    text = dockerfile.read_text()
    assert f"FROM public.ecr.aws/lambda/python:{packaging.runtime_python()}" in text
    assert f'CMD ["{packaging.HANDLER}"]' in text
    ctx = tmp_path / "ctx"
    assert (ctx / "dask_serverless" / "backends" / "aws_lambda" / "handler.py").exists()
    pins = (ctx / "requirements.txt").read_text().splitlines()
    assert pins[-1] == "scipy==1.14.1" and any(p.startswith("dask==") for p in pins)
