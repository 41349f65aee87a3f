#!/usr/bin/env bash
# session 18, device call 2 (first step): does warming a weight into L2 during a latency-bound kernel speed up the
# few-row linear that follows?  dev_prefetch.py is kept here as run (scratch, from the repo root)
timeout 150 python3 dev_prefetch.py $OUT/res/prefetch.json > $OUT/res/prefetch_log.txt 2>&1
