#!/bin/bash
# usage: profile.sh <codedir> <out> [bench args...]
dir=$1; out=$2; shift 2
cd $dir
PYTHONPATH=$dir /work/wt/ingest2/.venv/bin/python -m bench.webhooks "$@" > $out.json 2>&1 &
bp=$!
for i in $(seq 1 100); do
  sp=$(pgrep -P $bp -f "server.cli serve" | head -1)
  [ -n "$sp" ] && break; sleep 0.2
done
sleep 3
/work/wt/ingest2/.venv/bin/py-spy record --nonblocking --format raw -r 200 -d ${PROFILE_SECONDS:-8} --pid $sp -o $out.txt > /dev/null 2>&1
wait $bp
