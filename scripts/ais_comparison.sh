#!/usr/bin/env bash
# The paper_cpu comparison on MNIST re-scored by annealed importance sampling, in one command: train the sweep,
# measure the BDMC gap of AIS on diag seed 0 for several numbers of steps, take the smallest with a gap of at most
# 0.1 nats (else the largest measured), score every run by AIS and IW on the same first AIS_IMAGES test images,
# then BDMC at that schedule on seed 0 of each posterior and AIS from q(z|x) on the Gaussian posteriors.
# Everything stops at DEADLINE seconds after the start; the small result files are packed into $OUT/results.tgz
# after each phase (and on exit). How results/paper_cpu_mnist_ais was made: results/paper_cpu_mnist_ais/README.md.
#
#   DEVICE=cuda SEEDS=0,1,2,3,4 POSTERIORS=diag,rho,fullcov,planar,iaf JOBS=13 EXTRA="" \
#   BDMC_STEPS="100 300 1000 3000" BDMC_IMAGES=100 AIS_IMAGES=500 AIS_JOBS=5 DEADLINE=540 \
#   DATA=../shared/data RUNS=outputs/ais_comparison OUT=outputs/ais_comparison/packed bash scripts/ais_comparison.sh
#
# PY names the Python to use (default python).
set -u
START=$(date +%s)
export END=$(( START + DEADLINE ))
left() { local r=$(( END - $(date +%s) )); [ $r -gt 5 ] && echo $r || echo 5; }
export PYTHONUNBUFFERED=1
SWEEP=$RUNS/paper_gpu
mkdir -p "$OUT" "$RUNS"
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/pipeline.log"; }
pack() {  # the small result files only
  (cd "$RUNS" && find . \( -name summary.json -o -name 'evaluation*.json' -o -name 'bdmc*.json' -o -name metrics.jsonl \
      -o -name train.log -o -name config.yaml -o -name overrides.yaml -o -name hydra.yaml -o -name milestones.jsonl \) \
      -print0 | tar --null -czf "$OUT/results.tgz" -T -)
}
trap pack EXIT

log "train: $POSTERIORS x seeds $SEEDS on $DEVICE"
${PY:-python} train.py -m experiment=paper_cpu dataset=mnist "posterior=$POSTERIORS" "seed=$SEEDS" eval.gaps=false \
  trainer.device=$DEVICE logger=none trainer.progress=false dataset.root=$DATA dataset.download=false \
  hydra.sweep.dir=$SWEEP launcher=joblib hydra.launcher.n_jobs=$JOBS $EXTRA > "$OUT/train.out" 2>&1
log "train exit $? ; $(ls $SWEEP/*/summary.json 2>/dev/null | wc -l) summaries"
pack

D0=$(ls -d $SWEEP/*_mnist_diag_s0 | head -1)
log "bdmc sweep on $D0: $BDMC_STEPS"
timeout $(left) ${PY:-python} scripts/bdmc.py "$D0" trainer.device=$DEVICE ais.n_images=$BDMC_IMAGES \
  ais.batch_size=$BDMC_IMAGES --steps $BDMC_STEPS 2>&1 | tee -a "$OUT/pipeline.log"
# the smallest T whose gap is at most 0.1, else the largest run
T=$(${PY:-python} - "$D0" <<'EOF'
import json, sys, pathlib
rows = sorted((json.loads(p.read_text()) for p in pathlib.Path(sys.argv[1]).glob("bdmc*.json")), key=lambda r: r["steps"])
ok = [r["steps"] for r in rows if r["gap"] <= 0.1]
print(ok[0] if ok else rows[-1]["steps"])
EOF
)
log "chosen ais.steps=$T"
pack

log "ais on every run ($AIS_JOBS at a time)"
export T AIS_IMAGES DEVICE PY
ls -d $SWEEP/*_mnist_* | xargs -P $AIS_JOBS -I{} bash -c 'r=$(( END - $(date +%s) )); [ $r -gt 10 ] || exit 0;
  timeout $r ${PY:-python} scripts/evaluate.py "$1" --estimator ais ais.steps=$T ais.n_images=$AIS_IMAGES \
  ais.batch_size=$AIS_IMAGES trainer.device=$DEVICE trainer.progress=false' _ {} > "$OUT/ais.out" 2>&1
log "ais done: $(ls $SWEEP/*/evaluation_ais*.json 2>/dev/null | wc -l) files"
pack

log "bdmc at T=$T on seed 0 of each posterior; posterior start on the Gaussian ones"
for run in $(ls -d $SWEEP/*_s0); do
  timeout $(left) ${PY:-python} scripts/bdmc.py "$run" trainer.device=$DEVICE ais.n_images=$BDMC_IMAGES \
    ais.batch_size=$BDMC_IMAGES --steps $T 2>&1 | tail -1 | tee -a "$OUT/pipeline.log" &
done
wait
for run in $(ls -d $SWEEP/*_mnist_diag_s0 $SWEEP/*_mnist_fullcov_s0 $SWEEP/*_mnist_rho_s0); do
  timeout $(left) ${PY:-python} scripts/evaluate.py "$run" --estimator ais ais.start=posterior ais.steps=$T \
    ais.n_images=$AIS_IMAGES ais.batch_size=$AIS_IMAGES ais.iw_samples=0 trainer.device=$DEVICE \
    trainer.progress=false >> "$OUT/ais.out" 2>&1 &
done
wait
log "all done"
