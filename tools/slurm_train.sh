#!/usr/bin/env bash
# Usage: [GPUS=8] [PREEMPT_SIGNAL=USR1@180] bash tools/slurm_train.sh \
#            PARTITION JOB_NAME CONFIG WORK_DIR [train.py options]
#
# srun sends SIGUSR1 PREEMPT_SIGNAL's seconds before the time limit
# (PREEMPT_SIGNAL='' sends none); on it, or on SIGTERM (preemption,
# scancel), the trainer finishes the iteration, saves a checkpoint and exits
# with code 75 (m3i_mm's PreemptionHook). Inside an sbatch job the script
# then requeues the job (scontrol requeue); the requeued run
# (SLURM_RESTART_COUNT > 0) adds --resume and continues from that checkpoint.
set -x
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PREEMPT_SIGNAL=${PREEMPT_SIGNAL-USR1@180}
PREEMPTED=75  # m3i_mm.engine.hooks.PREEMPTED_EXIT_CODE
PY_ARGS=${@:5}
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then
    PY_ARGS="${PY_ARGS} --resume"
fi

PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
srun -p ${PARTITION} \
    --job-name=${JOB_NAME} \
    --gres=gpu:${GPUS_PER_NODE} \
    --ntasks=${GPUS} \
    --ntasks-per-node=${GPUS_PER_NODE} \
    --cpus-per-task=${CPUS_PER_TASK} \
    --kill-on-bad-exit=1 \
    ${PREEMPT_SIGNAL:+--signal=${PREEMPT_SIGNAL}} \
    ${SRUN_ARGS} \
    python -u "$(dirname "$0")/train.py" ${CONFIG} --work-dir=${WORK_DIR} --launcher="slurm" ${PY_ARGS}
STATUS=$?
if [ ${STATUS} -eq ${PREEMPTED} ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    scontrol requeue "${SLURM_JOB_ID}" && exit 0
fi
exit ${STATUS}
