# shellcheck shell=bash
# Sourced by e2e/test.sh (and by any script that reports tests of its own):
# how what is not a cargo test reports into the closing line
# (e2e/closing_line.py). $SWELL_RESULTS names a file of one line a test,
# "name<TAB>ok|FAILED|skipped<TAB>why"; a skip's why is its reason, which
# under CI=true must be on e2e/allowed-skips.txt.
#
#   report NAME ok|FAILED|skipped [WHY]   one test's result, from inside a script
#   check NAME COMMAND...                 runs COMMAND (a lane or script): the
#       lines it reported count as reported; if it reported none it is one
#       test, NAME, judged by its exit status; if it failed without a FAILED
#       line, NAME counts as failed too. Returns COMMAND's status.

report() {
  local name=$1 result=$2 why=${3:-}
  case $result in
    ok | FAILED | skipped) ;;
    *) echo "report: $name: result must be ok, FAILED or skipped, not $result" >&2; return 2 ;;
  esac
  [[ -n ${SWELL_RESULTS:-} ]] || return 0
  printf '%s\t%s\t%s\n' "${name//$'\t'/ }" "$result" "${why//$'\n'/ }" >>"$SWELL_RESULTS"
}

check() {
  local name=$1 rc=0 before wrote
  shift
  : "${SWELL_RESULTS:?check needs SWELL_RESULTS}"
  touch "$SWELL_RESULTS"
  before=$(wc -l <"$SWELL_RESULTS")
  "$@" || rc=$?
  wrote=$(tail -n "+$((before + 1))" "$SWELL_RESULTS" | cut -f2)
  if [[ -z $wrote ]]; then
    report "$name" "$( ((rc == 0)) && echo ok || echo FAILED)" "exit $rc"
  elif ((rc != 0)) && ! grep -qx FAILED <<<"$wrote"; then
    report "$name" FAILED "exit $rc, no failed test reported"
  fi
  return "$rc"
}
