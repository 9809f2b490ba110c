#!/usr/bin/env bash
# Screenshot of the MLflow UI comparing the search runs of one experiment, as in the README:
#   docs/screenshot.sh [URL] [EXPERIMENT] [OUT.png] [METRIC]
# URL: a tracking server (`lcsc mlflow-server`), default http://127.0.0.1:5000. Needs Debian's
# chromium (apt-get install -y --no-install-recommends chromium) and python3 on PATH.
set -euo pipefail
url=${1:-http://127.0.0.1:5000}
experiment=${2:-digits-default}
out=${3:-docs/mlflow_compare.png}
metric=${4:-best_fitness}

# the experiment's id and its search runs, newest first, through the REST API
page=$(python3 - "$url" "$experiment" "$metric" <<'PY'
import json, sys, urllib.parse, urllib.request

url, experiment, metric = sys.argv[1:]
def api(path, body=None):
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", None if body is None else json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())
q = urllib.parse.urlencode({"experiment_name": experiment})
exp = api(f"experiments/get-by-name?{q}")["experiment"]["experiment_id"]
runs = api("runs/search", {"experiment_ids": [exp], "filter": "tags.`lcsc.stage` = 'search'",
                           "order_by": ["attributes.start_time DESC"], "max_results": 10})["runs"]
if len(runs) < 2:
    sys.exit(f"{experiment}: fewer than two search runs to compare")
ids = json.dumps([r["info"]["run_id"] for r in runs[:2]], separators=(",", ":"))
keys = json.dumps([metric], separators=(",", ":"))
# the UI's own metric-page route (MLflow 3.17): JSON values in the query string
print(f"{url}/#/metric?runs={ids}&metric={urllib.parse.quote(json.dumps(metric))}&experiments={json.dumps([exp])}"
      f"&plot_metric_keys={urllib.parse.quote(keys)}&plot_layout={{}}&x_axis=step&y_axis_scale=linear"
      "&line_smoothness=1&show_point=false&deselected_curves=[]&last_linear_y_axis_range=[]")
PY
)
echo "screenshot of $page"
profile=$(mktemp -d)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$profile" --window-size=1900,1000 \
    --virtual-time-budget=20000 --screenshot="$out" "$page" 2>/dev/null
rm -rf "$profile"
echo "wrote $out"
