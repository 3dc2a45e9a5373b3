"""SageMaker managed spot training: a CreateTrainingJob request, in a small Python file.

The recipe is the API request itself (the shape botocore's service model validates offline),
embedded verbatim as JSON in a Python file that carries the comments a JSON file cannot:
``python job.py`` prints the JSON for ``aws sagemaker create-training-job --cli-input-json``,
``python job.py --submit`` sends it with boto3. The SageMaker Python SDK's ``Estimator``
equivalent is in the comments (the SDK is not installed here, so that part is not validated).

SageMaker syncs ``/opt/ml/checkpoints`` with ``CheckpointConfig.S3Uri`` during training and
restores it into a resumed job, so ``spotsafe run`` gets that folder as its root and no
``--remote``: a second upload would only double the traffic. ``StopTrainingJob`` sends SIGTERM
and kills the container 120 s later; the save budget plus the margin must fit in that.
"""

from __future__ import annotations

import json
import logging
import math

from ._options import MARGIN_S, RecipeOptions

log = logging.getLogger(__name__)

LOCAL_PATH = "/opt/ml/checkpoints"
"""SageMaker's default ``checkpoint_local_path``: synced to ``checkpoint_s3_uri``."""
STOP_GRACE_S = 120
"""StopTrainingJob: SIGTERM, then the container is killed this many seconds later."""
MAX_RUNTIME_S = 24 * 3600
"""``MaxRuntimeInSeconds`` of the recipe (training time only; edit to your job's)."""
MAX_WAIT_S = 2 * MAX_RUNTIME_S
"""``MaxWaitTimeInSeconds``: training plus the time spent waiting for spot capacity (>= MaxRuntime)."""
DEFAULT_INSTANCE_TYPE = "ml.g5.xlarge"
PLACEHOLDER_BUCKET = "REPLACE-WITH-YOUR-BUCKET"
PLACEHOLDER_ROLE = "arn:aws:iam::123456789012:role/REPLACE-WITH-YOUR-SAGEMAKER-EXECUTION-ROLE"
PLACEHOLDER_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/REPLACE-WITH-YOUR-IMAGE:latest"


def _ml(instance_type: str) -> str:
    return instance_type if instance_type.startswith("ml.") else "ml." + instance_type


def request(opts: RecipeOptions) -> dict:
    """The CreateTrainingJob request for ``opts`` (placeholders where the user must fill in)."""
    if opts.remote and not opts.remote.startswith("s3://"):
        raise ValueError(f"SageMaker syncs checkpoints only to S3, not to {opts.remote}; pass --remote s3://bucket/prefix.")
    root = opts.root or LOCAL_PATH
    remote = (opts.remote or f"s3://{PLACEHOLDER_BUCKET}/{opts.name}/checkpoints").rstrip("/")
    bucket = remote[len("s3://"):].split("/", 1)[0]
    return {
        "TrainingJobName": opts.name,
        "RoleArn": PLACEHOLDER_ROLE,
        "AlgorithmSpecification": {
            "TrainingImage": opts.image or PLACEHOLDER_IMAGE,
            "TrainingInputMode": "File",
            "ContainerEntrypoint": opts.supervised(root),  # no --remote: SageMaker uploads the root itself
        },
        "OutputDataConfig": {"S3OutputPath": f"s3://{bucket}/sagemaker-output/{opts.name}"},
        "ResourceConfig": {
            "InstanceType": _ml(opts.instance_types[0]) if opts.instance_types else DEFAULT_INSTANCE_TYPE,
            "InstanceCount": 1,
            "VolumeSizeInGB": 50,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": MAX_RUNTIME_S, "MaxWaitTimeInSeconds": MAX_WAIT_S},
        "EnableManagedSpotTraining": True,
        "CheckpointConfig": {"S3Uri": remote, "LocalPath": root},
    }


def budget_warning(opts: RecipeOptions) -> str | None:
    """One sentence when the budget plus the margin does not fit in StopTrainingJob's 120 s."""
    if opts.grace_s() <= STOP_GRACE_S:
        return None
    return (f"The save budget of {opts.budget_s:.0f} s plus the {MARGIN_S:.0f} s margin exceeds SageMaker's "
            f"{STOP_GRACE_S} s between SIGTERM and the kill: save less, or more often, so the emergency "
            "checkpoint fits.")


def render(opts: RecipeOptions) -> str:
    """The recipe file: comments, the request as JSON, and a few lines to print or submit it."""
    req = request(opts)
    warning = budget_warning(opts)
    if warning:
        log.warning("%s", warning)
    entry = req["AlgorithmSpecification"]["ContainerEntrypoint"]
    extra = list(opts.instance_types[1:])
    sdk = f"""#   from sagemaker.estimator import Estimator
#   est = Estimator(image_uri={req["AlgorithmSpecification"]["TrainingImage"]!r},
#                   role={PLACEHOLDER_ROLE!r},
#                   instance_type={req["ResourceConfig"]["InstanceType"]!r}, instance_count=1,
#                   use_spot_instances=True, max_run={MAX_RUNTIME_S}, max_wait={MAX_WAIT_S},
#                   checkpoint_s3_uri={req["CheckpointConfig"]["S3Uri"]!r},
#                   checkpoint_local_path={req["CheckpointConfig"]["LocalPath"]!r},
#                   container_entry_point={entry!r})
#   est.fit(job_name={opts.name!r})"""
    lines = [
        "# SageMaker managed spot training for a spot-safe job, written by `spotsafe recipe sagemaker`.",
        *([f"# WARNING: {warning}", "#"] if warning else []),
        "#   python THIS_FILE            prints the CreateTrainingJob request as JSON, for",
        "#                               aws sagemaker create-training-job --cli-input-json file://job.json",
        "#   python THIS_FILE --submit   sends it with boto3 (credentials and region from your AWS config)",
        "#",
        "# Fill in: RoleArn (the execution role), TrainingImage (an image with spotsafe and your code",
        "# installed; `spotsafe run` is its entry point), the bucket, and TrainingJobName (unique per job).",
        "#",
        f"# Checkpoints: spotsafe run writes them to {req['CheckpointConfig']['LocalPath']}, which SageMaker syncs to",
        f"# {req['CheckpointConfig']['S3Uri']} while the job runs and copies back into a resumed job, so the",
        "# command has no --remote (a second upload would double the traffic); a --profile must not set one.",
        "#",
        f"# Time budget: the save budget is {opts.budget_s:.0f} s, from {opts.budget_source}.",
        f"# spotsafe run gives the command {math.ceil(opts.budget_s)} s (--grace) after SIGTERM. StopTrainingJob sends SIGTERM",
        f"# and kills the container {STOP_GRACE_S} s later: budget + {MARGIN_S:.0f} s margin = {opts.grace_s()} s "
        + ("fits." if not warning else "does NOT fit."),
        "# How a spot interruption reaches the container (a SIGTERM, and how long before the kill) is not",
        "# documented in what spotsafe's authors found, and was not verified; SageMaker restarts an",
        "# interrupted spot job itself, from the synced checkpoints. Not verified either: whether",
        "# SageMaker appends the argument `train` to ContainerEntrypoint (spotsafe run would pass it",
        "# to the command), and the final upload of the checkpoint folder after a SIGTERM.",
        f"# MaxRuntimeInSeconds ({MAX_RUNTIME_S}) counts training time; MaxWaitTimeInSeconds ({MAX_WAIT_S}) also",
        "# counts waiting for spot capacity and must be >= MaxRuntimeInSeconds: edit both to your job.",
        *([f"# SageMaker takes one instance type per job; not used: {', '.join(extra)}."] if extra else []),
        "#",
        "# The same job with the SageMaker Python SDK (not validated by spotsafe's tests):",
        sdk,
        "",
        "import json",
        "import sys",
        "",
        f'REQUEST = json.loads(r"""\n{json.dumps(req, indent=4)}\n""")',
        "",
        'if __name__ == "__main__":',
        '    if sys.argv[1:] == ["--submit"]:',
        "        import boto3",
        "",
        '        print(boto3.client("sagemaker").create_training_job(**REQUEST)["TrainingJobArn"])',
        "    else:",
        "        print(json.dumps(REQUEST, indent=4))",
        "",
    ]
    return "\n".join(lines)


__all__ = ["LOCAL_PATH", "STOP_GRACE_S", "budget_warning", "render", "request"]
