#!/bin/sh
# cli_check.sh RC TEXT COMMAND...: runs COMMAND and passes when it exits with RC and its
# output (stdout and stderr) contains TEXT. A failing command (RC != 0) must print exactly
# one line on stderr, "normlab[ <command>]: <message>", without a source location, a doubled
# "normlab:" or an HDF5 error stack.
expected_rc=$1
expected_text=$2
shift 2
err_file=$(mktemp)
out=$("$@" 2>"$err_file")
rc=$?
err=$(cat "$err_file")
rm -f "$err_file"
printf '%s\n' "$out"
printf '%s\n' "$err"
if [ "$rc" -ne "$expected_rc" ]; then
  echo "cli_check: exit code $rc, expected $expected_rc" >&2
  exit 1
fi
if [ "$expected_rc" -ne 0 ]; then
  lines=$(printf '%s\n' "$err" | wc -l)
  if [ "$lines" -ne 1 ]; then
    echo "cli_check: $lines lines on stderr, expected one" >&2
    exit 1
  fi
  case "$err" in
    "normlab: "*|"normlab "*": "*) ;;
    *) echo "cli_check: stderr does not start with 'normlab <command>: '" >&2; exit 1 ;;
  esac
  case "$err" in
    *"normlab: normlab"*|*": normlab: "*|*".cpp:"[0-9]*|*HDF5-DIAG*)
      echo "cli_check: the message carries a source location, a doubled prefix or an HDF5 stack" >&2; exit 1 ;;
  esac
fi
case "$out$err" in
  *"$expected_text"*) exit 0 ;;
esac
echo "cli_check: the output lacks '$expected_text'" >&2
exit 1
