#!/bin/bash
# usage: ab.sh <label> <rounds> <variants...> -- <bench args>   (variants: base = /tmp/ingest2-base, new = /work/wt/ingest2, X = /tmp/ingest2-X)
label=$1; rounds=$2; shift 2
variants=(); while [ "$1" != "--" ]; do variants+=("$1"); shift; done; shift
out=/tmp/ingest2-bench/$label; mkdir -p $out
for r in $(seq 1 $rounds); do
  for v in "${variants[@]}"; do
    dir=/tmp/ingest2-$v; [ "$v" = new ] && dir=/work/wt/ingest2
    echo "round $r $v $(uptime)" >> $out/log
    (cd $dir && PYTHONPATH=$dir timeout 600 /work/wt/ingest2/.venv/bin/python -m bench.webhooks "$@" > $out/r$r-$v.json 2>&1)
  done
done
echo done >> $out/log
