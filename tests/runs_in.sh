# Sourced by the sweep checks, with $normlab set: runs_in F.h5 prints how many runs `normlab
# report` finds in the results file of the preset "quick" (0 when it does not exist yet), and
# fails, printing the report, when normlab cannot read it.
runs_in() {
  [ -e "$1" ] || { echo 0; return 0; }
  report=$("$normlab" report "$1" 2>&1) || { printf '%s\n' "$report" >&2; return 1; }
  case "$report" in
    *"no runs yet"*) echo 0 ;;
    *) printf '%s\n' "$report" | sed -n 's/^quick (.*): \([0-9]*\) runs, .*/\1/p' ;;
  esac
}
