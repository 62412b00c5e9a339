#!/usr/bin/env bash
# On the device, between long calls of maintainer/gpu_sleep.py's run (started with setsid, writing /var/stage/out):
# wait up to $1 seconds (default 540) for it to finish, then bring back what it wrote so far into $OUT:
# results.json, its own log, and a tarball of the servers' log tails and the profiler tables.
set -u
S=/var/stage/out
end=$((SECONDS + ${1:-540}))
while [ $SECONDS -lt $end ] && [ ! -f $S/DONE ]; do sleep 5; done
cp $S/results.json $S/master.log "$OUT"/ 2>/dev/null
rm -rf /tmp/poll && mkdir -p /tmp/poll/logs
for f in $S/*.log $S/*.txt; do
  [ -f "$f" ] || continue
  { head -n 150 "$f"; echo '[...]'; tail -n 400 "$f"; } > /tmp/poll/logs/$(basename "$f")
done
tar -C /tmp/poll -czf "$OUT"/logs.tgz logs
[ -f $S/DONE ] && echo "DONE after $(cat $S/DONE) s"
tail -n 30 $S/master.log
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
