#!/bin/sh
# Lists the newest executions through the API, with the token every run gets.
exec python3 - "$1" <<'PY'
import json, os, sys, urllib.request
count = int(sys.argv[1])
req = urllib.request.Request(
    "%s/executions?limit=%d&exclude_attributes=result" % (os.environ["ST2_ACTION_API_URL"], count),
    headers={"X-Auth-Token": os.environ["ST2_ACTION_AUTH_TOKEN"]},
)
for e in json.load(urllib.request.urlopen(req)):
    print("%s  %-10s %s  (%s)" % (e["id"], e["status"], e["action"]["ref"], e["context"].get("user", "")))
PY
