#!/bin/sh
# cli_check.sh RC TEXT COMMAND...: runs COMMAND and passes when it exits with RC and its
# output (stdout and stderr) contains TEXT.
expected_rc=$1
expected_text=$2
shift 2
out=$("$@" 2>&1)
rc=$?
printf '%s\n' "$out"
if [ "$rc" -ne "$expected_rc" ]; then
  echo "cli_check: exit code $rc, expected $expected_rc" >&2
  exit 1
fi
case "$out" in
  *"$expected_text"*) exit 0 ;;
esac
echo "cli_check: the output lacks '$expected_text'" >&2
exit 1
