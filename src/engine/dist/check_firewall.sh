#!/bin/sh
# Fails if an object file references or defines any symbol in namespace gloo.
set -e
for o in "$@"; do
  bad=$(nm -C "$o" | grep -E '(^| )gloo::|[<(, ]gloo::' || true)
  if [ -n "$bad" ]; then
    echo "check_firewall: $o touches gloo symbols:" >&2; echo "$bad" >&2; exit 1
  fi
  echo "check_firewall: $o: no gloo:: symbols (ok)"
done
