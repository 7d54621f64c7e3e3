#!/usr/bin/env bash
# Regenerates release/startup.order: the functions a release daemon runs from exec to serving its
# first client, which build.rs asks the linker (lld) to lay out side by side. An idle daemon's
# resident memory is mostly its own code pages, which the kernel maps in 64 KiB blocks around each
# one it touches; spread over a 9 MiB .text, start-up touches ~5 MiB of them, packed ~1.5 MiB.
#
# A stale list costs only that density (names that no longer exist are skipped at link time), so
# this runs by hand (`make startup-order`) after changes to start-up or to dependencies; the idle
# RSS figure of `make bench` shows when it is due.
#
# Names carry a hash of each crate's build settings, so a build whose dependencies have other
# features (`cargo bench` unifies in the dev-dependencies') has other names: the list is the union
# over the builds given.
#
# usage: release/startup-order.sh OUT BUTLER...   (release builds; needs valgrind, python3)
set -euo pipefail
out=$1
shift
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: >"$work/all"
for bin in "$@"; do
  bin=$(realpath "$bin")
  rm -f "$work"/*.cg "$work/butler.db"*

  # One session as a launcher runs it: start, authenticate, Version.Get, Meta.Shutdown; once on a
  # fresh database (migrations) and once on the one that left behind (the usual start).
  for run in fresh existing; do
    BUTLER_HOME=$work valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/$run.cg" \
      "$bin" --json daemon --transport tcp --keep-alive --dbpath "$work/butler.db" \
      </dev/null >"$work/$run.out" 2>"$work/$run.err" &
    daemon=$!
    python3 - "$work/$run.out" <<'EOF'
import json, socket, sys, time
deadline = time.time() + 60
while True:
    lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    listen = [l for l in lines if l.get("type") == "butlerd/listen-notification"]
    if listen:
        break
    if time.time() > deadline:
        sys.exit("the daemon printed no listen notification in 60 s")
    time.sleep(0.2)
host, port = listen[0]["tcp"]["address"].rsplit(":", 1)
conn = socket.create_connection((host, int(port)))
replies = conn.makefile("rb")
for i, (method, params) in enumerate([
    ("Meta.Authenticate", {"secret": listen[0]["secret"]}),
    ("Version.Get", {}),
    ("Meta.Shutdown", {}),
]):
    conn.sendall(json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params}).encode() + b"\n")
    reply = json.loads(replies.readline())
    if "error" in reply:
        sys.exit(f"{method}: {reply['error']}")
EOF
    wait "$daemon" || { cat "$work/$run.err" >&2; exit 1; }
  done

  # Every function callgrind saw that the binary defines, by its linker (mangled) name.
  nm --defined-only "$bin" | awk '$2 ~ /^[tTwW]$/ { print $3 }' | sort -u >"$work/defined"
  grep -hoE '^c?fn=\([0-9]+\) .+' "$work"/*.cg | sed -E 's/^c?fn=\([0-9]+\) //; s/@.*//' | sort -u \
    | comm -12 - "$work/defined" >>"$work/all"
done
sort -u "$work/all" >"$out"
echo "$out: $(wc -l <"$out") functions" >&2
