#!/usr/bin/env bash
# Compare the cleanup_temp_files executor with `find ROOT -type f -mmin +N -delete` on the
# same tree (default 200,000 files in 2,000 directories, 3/4 of them old), on fresh copies,
# alternating the tools: find, the executor with lock checks (the default: an open and a
# non-blocking flock per old file), and the executor without them (TEMP_CHECK_LOCKS=false).
# MAX_FILES=N adds a capped real run (sequential; its count kept beside the files, one
# write and fsync per 64 files claimed).
# Run by hand, not in CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/env.sh
DIRS=${DIRS:-2000}
FILES_PER_DIR=${FILES_PER_DIR:-100}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-4}
WORK=${BENCH_DIR:-/var/tmp/cleanup-bench}
cargo build --release --locked --example temp_walk -p worker
rm -rf "$WORK" && mkdir -p "$WORK"
echo "== building the template tree: $DIRS dirs x $FILES_PER_DIR files"
python3 - "$WORK/template" "$DIRS" "$FILES_PER_DIR" <<'PY'
import os, sys, time
root, dirs, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
old = time.time() - 3 * 86400
for d in range(dirs):
    path = os.path.join(root, f"d{d // 100:02}", f"sub{d:04}")
    os.makedirs(path, exist_ok=True)
    for f in range(per):
        name = os.path.join(path, f"f{f:03}.tmp")
        with open(name, "wb") as fh:
            fh.write(b"x" * 64)
        if f % 4 != 0:   # three files in four are old
            os.utime(name, (old, old))
PY
EXAMPLE="$TARGET_DIR/release/examples/temp_walk"
walk() { # dir, result file, extra flags
  local t0 t1
  t0=$(date +%s.%N); "$EXAMPLE" "$1" 24 "$THREADS" ${3:-} > "$2"; t1=$(date +%s.%N)
  python3 -c "
import json
r = json.load(open('$2'))
print(f'{$t1-$t0:.2f}s, {r[\"files_deleted\"]} deleted, left $(find "$1" -type f | wc -l), errors {r[\"errors_total\"]}, kept {r[\"kept\"]}')"
}
for round in $(seq 1 "$ROUNDS"); do
  rm -rf "$WORK/a" "$WORK/b" "$WORK/c" "$WORK/d"
  for copy in a b c ${MAX_FILES:+d}; do cp -a "$WORK/template" "$WORK/$copy"; done
  sync
  t0=$(date +%s.%N); find "$WORK/a" -type f -mmin +1440 -delete; t1=$(date +%s.%N)
  echo "round $round: find -delete          $(python3 -c "print(f'{$t1-$t0:.2f}s')"), left $(find "$WORK/a" -type f | wc -l)"
  echo "round $round: executor, lock checks $(walk "$WORK/b" "$WORK/result-b.json")"
  echo "round $round: executor, no locks    $(walk "$WORK/c" "$WORK/result-c.json" --no-locks)"
  if [ -n "${MAX_FILES:-}" ]; then
    echo "round $round: executor, max_files=$MAX_FILES $(walk "$WORK/d" "$WORK/result-d.json" "--max-files=$MAX_FILES")"
  fi
done
rm -rf "$WORK"
