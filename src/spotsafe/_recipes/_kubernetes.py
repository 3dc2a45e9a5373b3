"""The Kubernetes recipe: a ``batch/v1`` Job whose pods are replaced, not counted, when preempted.

Why a Job with a ``podFailurePolicy`` and not a bare ``restartPolicy: OnFailure``: a pod on a
reclaimed spot node is gone with its node, so the retry must be a *new pod*, and the Job must
not count that against ``backoffLimit``. ``podFailurePolicy`` (GA in Kubernetes 1.31, needs
``restartPolicy: Never``) ignores exit 75 and the ``DisruptionTarget`` condition the control
plane sets on pods it evicts or loses with their node.

The YAML is written by hand (a template; strings quoted as JSON, which is valid YAML) so that
spotsafe needs no YAML library and the comments sit next to the fields they explain.
"""

from __future__ import annotations

import json

from ._options import EXIT_CODE, MARGIN_S, RecipeOptions

DEFAULT_ROOT = "/ckpt"
"""Where the checkpoint volume is mounted in the container when ``--root`` is not given."""

PLACEHOLDER_IMAGE = "REPLACE-ME/your-training-image:tag"
"""The image when ``--image`` is not given: not a pullable name, so a forgotten one fails at once."""

FAILED_CODES = (2, 3, 4, 127)
"""``spotsafe run`` exit codes that end the Job at once: usage error, retry budget spent, crash
loop, command not found. Retrying them on a new pod would fail the same way."""

GKE_SPOT_GRACE_S = 15
"""Seconds of the 30 s GKE Spot notice non-system pods get by default (GKE spot-vms doc)."""

EKS_NOTICE_S = 120
"""The EC2 Spot interruption notice: two minutes."""


def _q(text: str) -> str:
    """``text`` as a double-quoted YAML scalar (JSON's string syntax is a subset of it)."""
    return json.dumps(text)


def _c(text: str) -> str:
    """``text`` made safe inside a ``#`` comment: one line."""
    return " ".join(str(text).splitlines())


def _flow(items) -> str:
    return "[" + ", ".join(_q(str(i)) if isinstance(i, str) else str(i) for i in items) + "]"


def render(opts: RecipeOptions) -> str:
    """A commented ``batch/v1`` Job that runs ``opts.command`` under ``spotsafe run``."""
    root = opts.root or DEFAULT_ROOT
    grace = opts.grace_s()
    argv = opts.supervised(root, remote=opts.remote)
    image = opts.image or PLACEHOLDER_IMAGE
    lines: list[str] = []
    add = lines.append

    add(f"# spotsafe recipe kubernetes: {_c(opts.name)}")
    add("# Apply with: kubectl apply -f job.yaml   (needs Kubernetes >= 1.31: podFailurePolicy is GA there)")
    add("#")
    add("# Time budget (notice -> save -> upload, all inside the grace period):")
    add(f"#   save budget {opts.budget_s:g} s, from {_c(opts.budget_source)}")
    add(f"#   + {MARGIN_S:g} s margin (the stop reaching the step loop, the supervisor's exit)")
    add(f"#   = terminationGracePeriodSeconds {grace}; spotsafe run --grace {argv[argv.index('--grace') + 1]}")
    add("#   The kubelet sends SIGTERM, waits the grace period, then SIGKILL. spotsafe finishes the current")
    add(f"#   step, writes the checkpoint{', uploads it' if opts.remote else ''} and exits {EXIT_CODE}.")
    add("#")
    add("# Where the notice comes from:")
    add(f"#   GKE Spot: a 30 s notice; non-system pods get {GKE_SPOT_GRACE_S} s of it by default and a larger grace")
    add("#     has no effect. GKE >= 1.35.0-gke.1171000 can give up to 120 s (GKE spot-vms doc; not verified here).")
    if grace > GKE_SPOT_GRACE_S:
        add(f"#     WARNING: this recipe asks for {grace} s, more than GKE Spot's default {GKE_SPOT_GRACE_S} s: measure")
        add("#     a smaller budget (--from ROOT), save less, or use a GKE version that allows more.")
    add(f"#   EKS Spot: EC2 gives a {EKS_NOTICE_S} s notice, but pods see it only if aws-node-termination-handler")
    add("#     or Karpenter's interruption handling drains the node (SIGTERM + this grace period). Without one")
    add("#     of them the pod is killed with its node, and only the last periodic checkpoint survives.")
    if grace > EKS_NOTICE_S:
        add(f"#     WARNING: {grace} s does not fit in EC2's {EKS_NOTICE_S} s notice.")
    add("#   Not verified here: a real preemption on GKE or EKS; this file is checked offline with")
    add("#   kubernetes-validate (strict) for Kubernetes 1.31 to 1.37.")
    add("#")
    add("# What you still do by hand:")
    if opts.image is None:
        add(f"#   - set the image: {PLACEHOLDER_IMAGE} is a placeholder (pass --image); spotsafe must be installed in it.")
    else:
        add("#   - make sure spotsafe is installed in the image.")
    if opts.remote:
        add(f"#   - give the pod write access to {_c(opts.remote)} (IRSA / EKS Pod Identity, GKE Workload Identity).")
    else:
        add("#   - create the PersistentVolumeClaim below (no --remote: the checkpoints must outlive the node).")
    add("#   - select spot nodes (see nodeSelector below) and request GPUs (resources) if you use them.")
    add("apiVersion: batch/v1")
    add("kind: Job")
    add("metadata:")
    add(f"  name: {_q(opts.name)}")
    add("spec:")
    add(f"  # Failures that count: a pod failing for a reason no rule below matches. {opts.max_restarts} from --max-restarts.")
    add(f"  backoffLimit: {opts.max_restarts}")
    add("  podFailurePolicy:")
    add("    rules:")
    add("      # spotsafe stopped for a notice and its checkpoint is durable: a new pod resumes it, uncounted.")
    add("      - action: Ignore")
    add("        onExitCodes:")
    add("          containerName: \"train\"")
    add("          operator: In")
    add(f"          values: [{EXIT_CODE}]")
    add("      # The pod was evicted, preempted or lost with its node (the control plane sets DisruptionTarget):")
    add("      # not the job's fault, uncounted.")
    add("      - action: Ignore")
    add("        onPodConditions:")
    add("          - type: DisruptionTarget")
    add("            status: \"True\"")
    add("      # spotsafe run already restarted the command inside the pod and gave up: usage error (2), retry")
    add("      # budget spent (3), crash loop (4), command not found (127). A new pod would fail the same way.")
    add("      # Anything else (5: no checkpoint within the grace, 137: OOM-killed) counts against backoffLimit.")
    add("      - action: FailJob")
    add("        onExitCodes:")
    add("          containerName: \"train\"")
    add("          operator: In")
    add(f"          values: {_flow(FAILED_CODES)}")
    add("  template:")
    add("    spec:")
    add("      # Required by podFailurePolicy; the retry is a new pod (a preempted node takes its pod with it).")
    add("      restartPolicy: Never")
    add(f"      # save budget {opts.budget_s:g} s + {MARGIN_S:g} s margin, rounded up (see the top of this file).")
    add(f"      terminationGracePeriodSeconds: {grace}")
    add("      # Spot nodes: uncomment the label of your platform (GKE / EKS managed node groups / Karpenter).")
    add("      # nodeSelector:")
    add("      #   cloud.google.com/gke-spot: \"true\"")
    add("      #   eks.amazonaws.com/capacityType: SPOT")
    add("      #   karpenter.sh/capacity-type: spot")
    if opts.instance_types:
        add("      # Any of the instance types you gave (--instance-type): more pools, fewer capacity waits.")
        add("      affinity:")
        add("        nodeAffinity:")
        add("          requiredDuringSchedulingIgnoredDuringExecution:")
        add("            nodeSelectorTerms:")
        add("              - matchExpressions:")
        add("                  - key: node.kubernetes.io/instance-type")
        add("                    operator: In")
        add(f"                    values: {_flow(opts.instance_types)}")
    add("      containers:")
    add("        - name: \"train\"")
    add(f"          image: {_q(image)}")
    add("          # spotsafe run: restarts crashes inside the pod, turns the SIGTERM into a checkpoint and exit "
        f"{EXIT_CODE}.")
    add("          command:")
    for arg in argv:
        add(f"            - {_q(arg)}")
    add("          # resources:")
    add("          #   limits:")
    add("          #     nvidia.com/gpu: 1")
    add("          volumeMounts:")
    add("            - name: \"checkpoints\"")
    add(f"              mountPath: {_q(root)}")
    add("      volumes:")
    add("        - name: \"checkpoints\"")
    if opts.remote:
        add(f"          # Node-local scratch: the durable copy is {_c(opts.remote)}, where a new pod on another node")
        add("          # restores from. (Without --remote this recipe uses a PersistentVolumeClaim instead.)")
        add("          emptyDir: {}")
    else:
        add("          # No --remote: the checkpoints must outlive the node, so they live on a PersistentVolumeClaim")
        add(f"          # you create ({_q(opts.name + '-ckpt')}). A ReadWriteOnce disk is zonal and re-attaching it to the new")
        add("          # node takes time; prefer --remote s3://... or gs://... with an emptyDir.")
        add("          persistentVolumeClaim:")
        add(f"            claimName: {_q(opts.name + '-ckpt')}")
    return "\n".join(lines) + "\n"
