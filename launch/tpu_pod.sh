#!/usr/bin/env bash
# Train fcdd_jax on a Cloud TPU VM or pod slice: create (or queue) the TPU, copy the code, install, run the
# same command on every worker with --distributed=auto, copy results back, delete the TPU.
#
#   PROJECT=my-proj ZONE=us-central2-b TPU_NAME=fcdd ACCELERATOR=v4-32 WORKDIR=/mnt/runs/mvtec \
#   RUN_ARGS="--config configs/mvtec.py --config.data.root=/data/mvtec" \
#   bash launch/tpu_pod.sh
#
# WORKDIR (default runs/demo, relative to ~/fcdd_jax on the workers) is a directory, not a URL: the workdir is
# written with local file I/O. On a slice of several workers it must be one directory they all see (e.g. a
# bucket mounted with gcsfuse, or Filestore, by DATA_CMD): every process reads the checkpoint to resume. At the
# end worker 0's WORKDIR is copied back to ./runs/.
# Optional: QUEUED=1 (queued resources, spot/preemptible capacity), SPOT=1, RUNTIME (TPU software version),
# KEEP=1 (do not delete the TPU at the end), DATA_CMD (a command run on every worker before training,
# e.g. to copy datasets from a bucket). Preemption: the job checkpoints on SIGTERM and the same command
# resumes from the last checkpoint (run the script again).
set -euo pipefail

: "${PROJECT:?set PROJECT}"
: "${ZONE:?set ZONE}"
: "${TPU_NAME:=fcdd-jax}"
: "${ACCELERATOR:=v4-8}"
: "${RUNTIME:=tpu-ubuntu2204-base}"
: "${RUN_ARGS:=--config configs/demo.py}"
: "${WORKDIR:=runs/demo}"
: "${QUEUED:=0}"
: "${SPOT:=0}"
: "${KEEP:=0}"
: "${DATA_CMD:=true}"
REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"

gc() { gcloud --project="${PROJECT}" "$@"; }

create_tpu() {
  local spot_flag=()
  if [[ "${SPOT}" == 1 ]]; then spot_flag=(--spot); fi
  if [[ "${QUEUED}" == 1 ]]; then
    gc compute tpus queued-resources create "${TPU_NAME}" --zone="${ZONE}" --node-id="${TPU_NAME}" \
      --accelerator-type="${ACCELERATOR}" --runtime-version="${RUNTIME}" "${spot_flag[@]}"
    echo "waiting for the queued resource ${TPU_NAME} to become ACTIVE ..."
    until gc compute tpus queued-resources describe "${TPU_NAME}" --zone="${ZONE}" \
        --format='value(state.state)' | grep -q ACTIVE; do sleep 30; done
  else
    gc compute tpus tpu-vm create "${TPU_NAME}" --zone="${ZONE}" --accelerator-type="${ACCELERATOR}" \
      --version="${RUNTIME}" "${spot_flag[@]}"
  fi
}

on_all() {
  gc compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=all --command="$1"
}

delete_tpu() {
  if [[ "${KEEP}" == 1 ]]; then return; fi
  if [[ "${QUEUED}" == 1 ]]; then
    gc compute tpus queued-resources delete "${TPU_NAME}" --zone="${ZONE}" --force --quiet || true
  else
    gc compute tpus tpu-vm delete "${TPU_NAME}" --zone="${ZONE}" --quiet || true
  fi
}

if ! gc compute tpus tpu-vm describe "${TPU_NAME}" --zone="${ZONE}" >/dev/null 2>&1; then
  create_tpu
fi
trap delete_tpu EXIT

# Copy the code (a tarball of the working tree) to every worker and install it with the TPU build of jax.
TARBALL="$(mktemp -d)/fcdd_jax.tar.gz"
tar -C "${REPO_DIR}" --exclude=.git --exclude=.venv --exclude=runs -czf "${TARBALL}" .
gc compute tpus tpu-vm scp "${TARBALL}" "${TPU_NAME}:~/fcdd_jax.tar.gz" --zone="${ZONE}" --worker=all
on_all "mkdir -p ~/fcdd_jax && tar -C ~/fcdd_jax -xzf ~/fcdd_jax.tar.gz && cd ~/fcdd_jax && \
  python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]==0.10.2' && (${DATA_CMD})"

# The same command on all workers; JAX detects the pod topology (--distributed=auto).
on_all "cd ~/fcdd_jax && .venv/bin/python -m fcdd_jax.main --distributed=auto --workdir=${WORKDIR} ${RUN_ARGS}"

# Worker 0's workdir (results, figures, checkpoints) back to ./runs/.
if [[ "${WORKDIR}" == /* ]]; then REMOTE="${WORKDIR}"; else REMOTE="fcdd_jax/${WORKDIR}"; fi   # relative: to the home directory
mkdir -p runs
gc compute tpus tpu-vm scp --recurse "${TPU_NAME}:${REMOTE}" runs/ --zone="${ZONE}" --worker=0
