"""The batch services' recipes: AWS Batch and Google Cloud Batch, retrying a task that exits 75.

Both take JSON, which has no comments and whose clients refuse unknown fields, so a recipe is
a block of ``#`` lines (the time budget, what is not verified, the commands to run) followed
by the JSON document; the commands in the header strip the ``#`` lines first
(``grep -v '^#'``). The JSON is built as a dict and dumped, never templated, so any command
line round-trips.

AWS Batch: the job definition (``RegisterJobDefinition``'s input, for
``aws batch register-job-definition --cli-input-json``). Google Cloud Batch: the job (the
REST ``Job`` resource, for ``gcloud batch jobs submit --config``).
"""

from __future__ import annotations

import json

from ._options import EXIT_CODE, MARGIN_S, RecipeOptions

DEFAULT_ROOT = "/ckpt"
"""The checkpoint root inside the container when ``--root`` is not given (the container's own disk)."""

PLACEHOLDER_IMAGE = "REPLACE-ME/your-training-image:tag"
"""The image when ``--image`` is not given: not a pullable name, so a forgotten one fails at once."""

AWS_MAX_ATTEMPTS = 10
"""AWS Batch's ``retryStrategy.attempts`` range is 1 to 10 (job_retries doc)."""

GCP_MAX_RETRIES = 10
"""Google Cloud Batch's ``maxRetryCount`` range is 0 to 10 (TaskSpec reference)."""

GCP_PREEMPTED_CODE = 50001
"""The exit code Google Cloud Batch reports for a task whose Spot VM was preempted (its list of
reserved exit codes, troubleshooting doc; not verified here)."""

EC2_NOTICE_S = 120
GCP_NOTICE_S = 30


def _c(text: object) -> str:
    """``text`` made safe inside a ``#`` line: one line."""
    return " ".join(str(text).splitlines())


def _document(header: list[str], doc: dict) -> str:
    return "\n".join("# " + line if line else "#" for line in header) + "\n" + json.dumps(doc, indent=2) + "\n"


def _budget_lines(opts: RecipeOptions, notice_s: int, where: str) -> list[str]:
    grace = opts.grace_s()
    lines = [
        "Time budget (notice -> save -> upload, all before the machine goes):",
        f"  save budget {opts.budget_s:g} s, from {_c(opts.budget_source)}",
        f"  + {MARGIN_S:g} s margin (the stop reaching the step loop, the supervisor's exit) = {grace} s needed;",
        f"  {where} gives {notice_s} s of notice.",
    ]
    if grace > notice_s:
        lines.append(f"  WARNING: {grace} s does not fit in {notice_s} s: measure a smaller budget (--from ROOT) or save less.")
    return lines


def render_aws_batch(opts: RecipeOptions) -> str:
    """An AWS Batch job definition that runs ``opts.command`` under ``spotsafe run``, retried on exit 75."""
    root = opts.root or DEFAULT_ROOT
    argv = opts.supervised(root, remote=opts.remote)
    attempts = max(1, min(AWS_MAX_ATTEMPTS, 1 + opts.max_restarts))
    doc = {
        "jobDefinitionName": opts.name,
        "type": "container",
        "platformCapabilities": ["EC2"],
        "containerProperties": {
            "image": opts.image or PLACEHOLDER_IMAGE,
            "command": argv,
            "resourceRequirements": [{"type": "VCPU", "value": "4"}, {"type": "MEMORY", "value": "16384"}],
        },
        "retryStrategy": {
            "attempts": attempts,
            "evaluateOnExit": [
                {"onExitCode": str(EXIT_CODE), "action": "RETRY"},
                {"onStatusReason": "Host EC2*", "action": "RETRY"},
                {"onReason": "*", "action": "EXIT"},
            ],
        },
    }
    types = ", ".join(opts.instance_types) or "your instance types"
    header = [
        f"spotsafe recipe aws-batch: {_c(opts.name)} (an AWS Batch job definition; JSON after these # lines)",
        "Register and submit (a queue on a SPOT compute environment):",
        "  grep -v '^#' recipe.json > jobdef.json",
        "  aws batch register-job-definition --cli-input-json file://jobdef.json",
        f"  aws batch submit-job --job-name {_c(opts.name)} --job-queue YOUR-SPOT-QUEUE --job-definition {_c(opts.name)}",
        "",
        f"Retries: {attempts} attempts in all (1 + --max-restarts {opts.max_restarts}, at most {AWS_MAX_ATTEMPTS}). The rules",
        "are tried in order: exit 75 (spotsafe stopped for a notice, checkpoint durable) -> RETRY; a status",
        "reason starting 'Host EC2' (the instance was reclaimed) -> RETRY (that pattern is commonly cited,",
        "NOT VERIFIED here); anything else -> EXIT, since spotsafe run already restarted crashes inside the",
        "container. Every retry uses one attempt: AWS Batch has no uncounted retry.",
        "",
        *_budget_lines(opts, EC2_NOTICE_S, "EC2 Spot"),
        "  How the container hears of it, NOT VERIFIED for Batch-managed instances: spotsafe polls the",
        "  instance metadata (IMDSv2 needs a hop limit of 2 from a container); ECS sends SIGTERM and waits",
        "  ECS_CONTAINER_STOP_TIMEOUT (default 30 s) when ECS_ENABLE_SPOT_INSTANCE_DRAINING=true.",
        "",
        "What you still do by hand:",
        f"  - a SPOT compute environment (allocationStrategy SPOT_PRICE_CAPACITY_OPTIMIZED, instanceTypes: {_c(types)})",
        "    and a job queue on it; the job role's access to the bucket; vCPU, memory and GPU in resourceRequirements.",
    ]
    header += _image_and_root(opts, root, "instance")
    return _document(header, doc)


def render_gcp_batch(opts: RecipeOptions) -> str:
    """A Google Cloud Batch job on Spot VMs that runs ``opts.command`` under ``spotsafe run``, retried on exit 75."""
    root = opts.root or DEFAULT_ROOT
    argv = opts.supervised(root, remote=opts.remote)
    retries = min(GCP_MAX_RETRIES, opts.max_restarts)
    policy: dict = {"provisioningModel": "SPOT"}
    if opts.instance_types:
        policy["machineType"] = opts.instance_types[0]
    doc = {
        "taskGroups": [{
            "taskCount": 1,
            "taskSpec": {
                "runnables": [{"container": {"imageUri": opts.image or PLACEHOLDER_IMAGE,
                                             "entrypoint": argv[0], "commands": argv[1:]}}],
                "computeResource": {"cpuMilli": 4000, "memoryMib": 16384},
                "maxRetryCount": retries,
                "lifecyclePolicies": [{"action": "RETRY_TASK",
                                       "actionCondition": {"exitCodes": [EXIT_CODE, GCP_PREEMPTED_CODE]}}],
            },
        }],
        "allocationPolicy": {"instances": [{"policy": policy}]},
        "logsPolicy": {"destination": "CLOUD_LOGGING"},
    }
    region = opts.regions[0] if opts.regions else "REGION"
    header = [
        f"spotsafe recipe gcp-batch: {_c(opts.name)} (a Google Cloud Batch job; JSON after these # lines)",
        "Submit:",
        "  grep -v '^#' recipe.json > job.json",
        f"  gcloud batch jobs submit {_c(opts.name)} --location {_c(region)} --config job.json",
        "",
        f"Retries: up to {retries} (--max-restarts {opts.max_restarts}, at most {GCP_MAX_RETRIES}). The lifecycle policy retries",
        f"the task on exit {EXIT_CODE} (spotsafe stopped for a notice, checkpoint durable) and on {GCP_PREEMPTED_CODE} (Batch's",
        "code for a preempted VM, NOT VERIFIED here); Batch takes the opposite action, FAIL_TASK, for every",
        "other failure, since spotsafe run already restarted crashes inside the task. Retries on 75 still",
        "count toward maxRetryCount: Batch has no uncounted retry.",
        "",
        *_budget_lines(opts, GCP_NOTICE_S, "a Spot VM's preemption"),
        "  How the container hears of it, NOT VERIFIED: spotsafe polls the metadata server's",
        "  instance/preempted; whether Batch forwards the guest's shutdown as SIGTERM to the container is",
        "  not documented in what we found.",
        "",
        "What you still do by hand:",
        "  - the service account's access to the bucket; GPUs (allocationPolicy.instances[].policy.accelerators).",
    ]
    if len(opts.instance_types) > 1 or len(opts.regions) > 1:
        header.append("  - Batch takes one machine type (instances[0]) and one region per job: the first given are")
        header.append("    used; submit another job to try the others.")
    header += _image_and_root(opts, root, "VM")
    return _document(header, doc)


def _image_and_root(opts: RecipeOptions, root: str, machine: str) -> list[str]:
    """The header's last by-hand lines, the same for both services: the image, and where the root survives."""
    lines = []
    if opts.image is None:
        lines.append(f"  - the image: {PLACEHOLDER_IMAGE} is a placeholder (pass --image); spotsafe must be in it.")
    if opts.remote:
        lines.append(f"  - {root} is the container's own disk; a retry on a new {machine} restores from "
                     f"{_c(opts.remote)}.")
    else:
        lines.append(f"  - WARNING: no --remote. {root} is lost with the {machine}: a retry starts from scratch.")
    return lines
