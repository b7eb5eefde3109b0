#!/usr/bin/env bash
# Start one training stage on every worker of a Cloud TPU VM pod.
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE --config configs/stages/stage1_post_train_trailing.py \
#       --bucket BUCKET --workdir runs/stage1 [--repo ~/flmjax] [--project PROJECT] [-- --config.x=y ...]
#
# Flags:
#   --tpu NAME        the TPU VM (pod slice) name, as given to `gcloud compute tpus tpu-vm create`
#   --zone ZONE       its zone, e.g. us-central2-b
#   --config PATH     a stage config, relative to the repository on the workers
#   --bucket BUCKET   a GCS bucket (no gs:// prefix) mounted with gcsfuse at /mnt/BUCKET on every worker;
#                     checkpoints, metrics and the data live there, so every host sees the same files and a
#                     preempted pod resumes from the newest complete checkpoint
#   --workdir DIR     the stage's workdir inside the bucket (/mnt/BUCKET/DIR)
#   --repo DIR        where the repository is checked out on the workers (default ~/flmjax; install it there
#                     first with: pip install -e '.[test]' and jax[tpu])
#   --project ID      the GCP project (default: gcloud's)
#   after --           extra flags for launch.train (config overrides)
#
# Each worker runs `python -m launch.train --tpu_pod`: jax.distributed.initialize() reads the pod topology from
# the TPU environment, each host loads its own rows of every global batch, and only process 0 writes metrics.
# TPUs send SIGTERM before a maintenance event; launch.train then saves a checkpoint and exits, and running this
# script again resumes.
set -euo pipefail

tpu="" zone="" config="" bucket="" workdir="" repo="~/flmjax" project=""
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --bucket) bucket="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --repo) repo="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown flag $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
for required in tpu zone config bucket workdir; do
  if [[ -z "${!required}" ]]; then echo "--$required is required (see the header of $0)" >&2; exit 2; fi
done

project_flag=()
[[ -n "$project" ]] && project_flag=(--project "$project")
mount="/mnt/${bucket}"
remote="set -e
mkdir -p ${mount}
mountpoint -q ${mount} || gcsfuse --implicit-dirs ${bucket} ${mount}
cd ${repo}
python -m launch.train --tpu_pod --config ${config} --workdir ${mount}/${workdir} \
  --config.data.data_dir=${mount}/data --config.data.tokenizer=${mount}/data/tokenizer.model ${extra[*]:-}"

gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" "${project_flag[@]}" --worker=all --command "$remote"
