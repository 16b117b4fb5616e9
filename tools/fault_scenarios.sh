#!/usr/bin/env bash
# Issue 28's bad-input and fault scenarios that need only the CLI and a sqlite store, as a user runs them.
# Prints one row per scenario: name | exit code | stderr lines | what was left behind. docs/faults.md holds the
# table of a run; the server scenarios are tests (tests/test_faults.py), named there.
#   tools/fault_scenarios.sh [WORKDIR]      (default: a fresh temp folder; cmidd on PATH or CMIDD="python -m cmidd.cli")
set -u
CMIDD=${CMIDD:-cmidd}
W=${1:-$(mktemp -d /tmp/cmidd-faults.XXXXXX)}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$W" && cd "$W" || exit 1
export MLFLOW_TRACKING_URI="sqlite:///$W/mlflow.db"

tiny() {  # a toy distill job: 8x8 digits, ConvNetD1, $1 iterations, output $2, cmi.lam $3
  cat <<EOF
kind: distill
name: tiny
ipc: 2
data: {name: digits}
net: {name: ConvNetD1, width: 16}
method: {name: dm, iterations: $1, batch_real: 16}
cmi: {lam: $3}
proxies: {set: convnet-x1, epochs: 1, dir: $W/proxies}
eval: {archs: [ConvNetD1], num_eval: 1, epochs: 2}
output: {dir: $2, checkpoint_every: ${4:-2}}
EOF
}
runs() { python3 - "$W/mlflow.db" <<'EOF'
import sqlite3, sys, os
if not os.path.exists(sys.argv[1]):
    print("no mlflow.db"); sys.exit()
con = sqlite3.connect(sys.argv[1])
r = con.execute("select status, count(*) from runs group by status").fetchall()
v = con.execute("select count(*), count(distinct run_id) from model_versions").fetchone()
print("runs", dict(r), "versions", v[0])
EOF
}
row() {  # name, exit code, stderr file
  printf '%s | exit %s | %s stderr line(s) | %s\n' "$1" "$2" "$(grep -vc '^\[cmidd\]' "$3")" "$(grep -v '^\[cmidd\]' "$3" | tail -1 | cut -c1-220)"
}
bad() {  # name, file, then the cmidd arguments; checks that nothing new appears in $W
  local name=$1; shift
  : > err.txt
  find "$W" | sort > before.txt
  $CMIDD -q "$@" 2> err.txt >/dev/null; local rc=$?
  row "$name" $rc err.txt
  find "$W" | sort > after.txt
  if cmp -s before.txt after.txt; then echo "    nothing written"; else echo "    WROTE: $(comm -13 before.txt after.txt | head -3 | tr '\n' ' ')"; fi
}

echo "== bad input (exit 2, one line naming file and field, nothing written)"
: > before.txt; : > after.txt
: > empty.yaml
bad empty-file run empty.yaml
tiny 4 out/job 0 > dup.yaml; echo "ipc: 3" >> dup.yaml
bad duplicate-key run dup.yaml
tiny 4 out/job 0 | sed 's/^ipc: 2/ipc: true/' > booltrue.yaml
bad ipc-true run booltrue.yaml
tiny 4 out/job 0 | sed 's/batch_real: 16}/batch_real: 16, lr_img: .inf}/' > inf.yaml
bad lr_img-inf run inf.yaml
head -c 2048 /dev/urandom > binary.yaml
bad binary-file run binary.yaml
tiny 4 out/job 0 > good.yaml
bad set-unclosed-list run good.yaml --set 'eval.archs=[ConvNetD2'
echo "a file" > afile
tiny 4 afile 0 > outfile.yaml
bad output-dir-is-a-file run outfile.yaml
tiny 4 out/job 0 | sed 's/^ipc: 2/ipc: 500/' > bigipc.yaml
bad ipc-too-large run bigipc.yaml
tiny 4 out/job 0 | sed 's#data: {name: digits}#data: {name: cifar10, root: nowhere}#; s/ConvNetD1, width: 16/ConvNet/' > cifar.yaml
bad cifar-root-missing run cifar.yaml
tiny 4 out/job 0 | sed 's#data: {name: digits}#data: {name: imagefolder, root: nowhere}#' > imf.yaml
bad imagefolder-root-missing run imf.yaml
cp "$REPO/search_spaces/digits_dmcmi.yaml" space.yaml
sed -i "s#storage: .*#storage: $W/search#; s#dir: runs/search-digits-dmcmi/trial#dir: $W/trial#" space.yaml
bad search-grace-over-iterations search space.yaml --set base.method.iterations=10
$CMIDD -q validate "$REPO"/search_spaces/*.yaml > val.txt 2> err.txt; echo "validate-search-spaces | exit $? | $(grep -c '^ok' val.txt) ok of $(ls "$REPO"/search_spaces/*.yaml | wc -l)"

echo "== damaged local checkpoint (exit 1, one line naming the file, before the proxies, no new run)"
tiny 4 "$W/job" 1.0 > job.yaml
$CMIDD -q run job.yaml > /dev/null 2> err.txt; echo "first run | exit $? | $(runs)"
cp job/checkpoint.pt good.pt
rm -rf proxies
python3 - job/checkpoint.pt <<'EOF'
import sys; p = sys.argv[1]; b = bytearray(open(p, "rb").read()); n = len(b) // 2
for i in range(n, n + 4): b[i] ^= 0xFF
open(p, "wb").write(b)
EOF
sha=$(sha256sum job/checkpoint.pt)
$CMIDD -q run job.yaml --resume > /dev/null 2> err.txt; rc=$?; row flipped-bytes $rc err.txt
echo "    file unchanged: $([ "$sha" = "$(sha256sum job/checkpoint.pt)" ] && echo yes || echo NO); proxies pre-trained: $([ -d proxies ] && echo YES || echo no); $(runs)"
head -c 3000 good.pt > job/checkpoint.pt
$CMIDD -q run job.yaml --resume > /dev/null 2> err.txt; rc=$?; row truncated $rc err.txt
echo "    proxies pre-trained: $([ -d proxies ] && echo YES || echo no); $(runs)"
cp good.pt job/checkpoint.pt

echo "== SIGKILL of a tracked job, then --resume (one run, FINISHED, one version)"
rm -rf kjob
tiny 600 "$W/kjob" 0 100 > kjob.yaml
$CMIDD -q run kjob.yaml > /dev/null 2> err.txt & pid=$!
while [ ! -f kjob/checkpoint.pt ] && kill -0 $pid 2>/dev/null; do sleep 0.05; done
kill -9 $pid; wait $pid 2>/dev/null; echo "killed | exit 137 | $(runs)"
$CMIDD -q run kjob.yaml --resume > out.txt 2> err.txt; echo "resume | exit $? | $(runs) | $(grep registered out.txt)"
$CMIDD -q run kjob.yaml --resume > out.txt 2> err.txt; echo "resume again | exit $? | $(runs) | $(grep registered out.txt)"
rid=$(python3 -c "import json; print(json.load(open('kjob/mlflow_run.json'))['run_id'])")
$CMIDD -q run kjob.yaml --resume-run "$rid" > out.txt 2> err.txt; rc=$?; row "resume-run of the resumed run" $rc err.txt; echo "    $(runs)"

echo "== two cmidd run at once on a fresh sqlite store"
tiny 2 "$W/r0" 0 > r0.yaml; tiny 2 "$W/r1" 0 > r1.yaml
sed -i 's/^name: tiny/name: r0/' r0.yaml; sed -i 's/^name: tiny/name: r1/' r1.yaml
MLFLOW_TRACKING_URI="sqlite:///$W/fresh/mlflow.db" $CMIDD -q run r0.yaml > /dev/null 2> e0.txt & p0=$!
MLFLOW_TRACKING_URI="sqlite:///$W/fresh/mlflow.db" $CMIDD -q run r1.yaml > /dev/null 2> e1.txt & p1=$!
wait $p0; c0=$?; wait $p1; c1=$?
echo "concurrent fresh store | exit $c0 and $c1 | $(python3 -c "import sqlite3; print(sqlite3.connect('$W/fresh/mlflow.db').execute('select status from runs').fetchall())")"
echo "workdir: $W"
