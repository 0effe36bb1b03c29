# Shared by the rig scripts, which source it (it is not run): messages on
# stderr under the script's prefix, failing with the tail of the script's
# log, and serialising concurrent runs.
#
#   rig_prefix="rig: model-server"; log="$RIG_DIR/model-server.log"
#   . "$here/lib.sh"

# A progress line on stderr (stdout is for what the script prints).
say() { echo "$rig_prefix: $*" >&2; }

# Exits 1 with the message.
die() {
  say "$*"
  exit 1
}

# Exits 1 with the message and the last 40 lines of $log, when it has any,
# so a CI failure shows why without digging.
fail() {
  say "$*"
  if [[ -s "${log:-}" ]]; then
    echo "---- last 40 lines of $log ----" >&2
    tail -n 40 "$log" >&2
    echo "---- end of $log ----" >&2
  fi
  exit 1
}

# Holds an exclusive lock on the file $1 until the script exits (where
# flock exists), so concurrent runs do not build the same thing twice.
lock() {
  if command -v flock >/dev/null; then
    exec 9>"$1"
    flock 9
  fi
}
