#!/usr/bin/env bash
# Run the digits search on a Ray cluster through the Ray Jobs API. Trials spread over the cluster's nodes;
# their MLflow runs and artifacts go to the tracking server (an mlflow server with --artifacts-destination),
# so nothing stays on one node only.
#   RAY_HEAD=http://10.0.0.5:8265 MLFLOW=http://10.0.0.5:5000 bash jobs/submit_search_digits.sh
set -euo pipefail
: "${RAY_HEAD:?set RAY_HEAD to the Ray dashboard address, e.g. http://HEAD:8265}"
: "${MLFLOW:?set MLFLOW to the tracking server, e.g. http://HEAD:5000}"
ray job submit --address "$RAY_HEAD" --working-dir . -- \
    cmidd search search_spaces/digits_dmcmi.yaml --address auto --tracking-uri "$MLFLOW" \
    --set search.max_concurrent_trials=4 "$@"
