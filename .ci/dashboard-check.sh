#!/usr/bin/env bash
# The Grafana dashboard (deploy/grafana/tierdns.json) stays honest: the JSON parses;
# every panel has a title, a description and the $datasource variable; every
# Grafana variable used is defined; every tierdns_ metric its queries (and variable
# queries) name is one tierdns exports (declared by a describe_* call in
# src/metrics.rs or src/metrics/*.rs, or emitted as a literal in src/; _bucket/_sum/_count only on
# histograms); every label they group, match or show is one tierdns or Prometheus
# sets; and every expression, with the Grafana variables substituted, is valid
# PromQL: all are written as recording rules and checked with `promtool check rules`.
#
#   .ci/dashboard-check.sh                   checks deploy/grafana/tierdns.json
#   .ci/dashboard-check.sh path/to/x.json    or DASHBOARD=path .ci/dashboard-check.sh
#
# Needs python3 (stdlib only) and promtool (Debian: apt-get install prometheus).
# Builds and runs nothing; safe from any working directory. KEEP=1 keeps the temp
# dir (rules.yml: one recording rule dashboard:panel_N:expr_REF per query).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DASHBOARD=${1:-${DASHBOARD:-$ROOT/deploy/grafana/tierdns.json}}
case $DASHBOARD in /*) ;; *) DASHBOARD=$PWD/$DASHBOARD ;; esac
cd "$ROOT"
PASSED=0 FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "PASS: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }
summary() {
    echo "dashboard-check: $PASSED passed, $FAILED failed ($DASHBOARD)"
    [ "$FAILED" -eq 0 ]
}

if ! command -v python3 >/dev/null; then
    fail "python3 not found (needed to read the dashboard JSON)"
    summary
fi
if ! command -v promtool >/dev/null; then
    fail "promtool not found: install Debian's prometheus package (apt-get install prometheus)"
    summary
fi
if [ ! -f "$DASHBOARD" ]; then
    fail "no dashboard at $DASHBOARD"
    summary
fi

WORK=$(mktemp -d /tmp/tierdns-dashboard.XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT

# Python prints PASS:/FAIL: lines and writes the rule file; the shell counts them.
python3 - "$DASHBOARD" "$ROOT/src" "$WORK/rules.yml" >"$WORK/py.txt" 2>&1 <<'PY' || true
import json, pathlib, re, sys

dash_path, src_dir, rules_path = sys.argv[1:4]

def ok(msg): print(f"PASS: {msg}")
def bad(msg): print(f"FAIL: {msg}")

try:
    dash = json.loads(pathlib.Path(dash_path).read_text())
except (OSError, ValueError) as e:
    bad(f"dashboard JSON does not parse: {e}")
    sys.exit(0)
ok(f"dashboard JSON parses (schemaVersion {dash.get('schemaVersion')}, uid {dash.get('uid')!r})")

# --- what tierdns exports: names, histograms, label names -----------------------
sources = {p: p.read_text() for p in sorted(pathlib.Path(src_dir).rglob("*.rs"))}
metrics_rs = "\n".join(
    p.read_text()
    for p in [pathlib.Path(src_dir) / "metrics.rs", *sorted((pathlib.Path(src_dir) / "metrics").glob("*.rs"))]
    if p.exists()
)
described = {}
for kind, name in re.findall(r'describe_(counter|gauge|histogram)!\(\s*"(tierdns_\w+)"', metrics_rs):
    described[name] = kind
emitted, histograms = set(), {n for n, k in described.items() if k == "histogram"}
for text in sources.values():
    emitted |= set(re.findall(r'"(tierdns_\w+)"', text))
    histograms |= set(re.findall(r'histogram!\(\s*"(tierdns_\w+)"', text))
known = set(described) | emitted
labels = {"instance", "job", "le", "__name__"}  # Prometheus' own
for text in sources.values():
    labels |= set(re.findall(r'"([a-z_]+)"\s*=>', text))               # counter!(n, "k" => v)
    labels |= set(re.findall(r'\(\s*"tierdns_\w+",\s*"([a-z_]+)",', text))  # (name, "k", "v", ..)
if not described:
    bad("no describe_* calls found in src/metrics.rs or src/metrics/ (has it moved?)")
    sys.exit(0)

# --- variables ------------------------------------------------------------------
variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
ds_var = variables.get("datasource", {})
if ds_var.get("type") == "datasource" and ds_var.get("query") == "prometheus":
    ok("template variable $datasource: type datasource, query prometheus")
else:
    bad("template variable 'datasource' (type datasource, query prometheus) missing")
BUILTIN = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "__range_s": "3600",
           "__range_ms": "3600000", "__interval_ms": "60000"}
VAR_RE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")

def substitute(expr, where, problems):
    def sub(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in BUILTIN:
            return BUILTIN[name]
        if name not in variables:
            problems.append(f"{where}: undefined variable ${name}")
        return ".*"
    return VAR_RE.sub(sub, expr)

def query_of(v):
    q = v.get("query")
    return q.get("query", "") if isinstance(q, dict) else (q or "")

# --- panels ---------------------------------------------------------------------
def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))  # collapsed rows nest their panels

def ds_is_var(ds):
    uid = ds.get("uid") if isinstance(ds, dict) else ds
    return uid in ("$datasource", "${datasource}")

problems, exprs, ids = [], [], set()
panels = list(walk(dash.get("panels", [])))
for p in panels:
    pid, title = p.get("id"), (p.get("title") or "").strip()
    where = f"panel {pid} {title!r}"
    if not title:
        problems.append(f"panel {pid} ({p.get('type')}) has no title")
    if pid in ids:
        problems.append(f"{where}: duplicate panel id")
    ids.add(pid)
    if p.get("type") == "row":
        continue
    if not (p.get("description") or "").strip():
        problems.append(f"{where}: no description")
    if not ds_is_var(p.get("datasource")):
        problems.append(f"{where}: datasource {p.get('datasource')!r} is not the $datasource variable")
    targets = [t for t in p.get("targets", []) if (t.get("expr") or "").strip()]
    if not targets:
        problems.append(f"{where}: no query")
    for i, t in enumerate(targets, 1):
        if "datasource" in t and not ds_is_var(t["datasource"]):
            problems.append(f"{where} query {t.get('refId')}: datasource is not $datasource")
        exprs.append((pid, title, t.get("refId") or str(i), t["expr"], t.get("legendFormat") or ""))
n_rows = sum(1 for p in panels if p.get("type") == "row")
if problems:
    for m in problems: bad(m)
    problems = []
else:
    ok(f"{len(panels) - n_rows} panels in {n_rows} rows: each has a title, a description and datasource $datasource")

# --- metric and label names -----------------------------------------------------
STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
def check_names(expr, where):
    bare = STRINGS.sub('""', expr)
    for name in sorted(set(re.findall(r"\btierdns_[A-Za-z0-9_:]*", bare))):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name in known:
            continue
        if base != name and base in histograms:
            continue
        if base != name and base in known:
            problems.append(f"{where}: {name}: {base} is not a histogram")
        else:
            problems.append(f"{where}: unknown metric {name} (not in a describe_* of src/metrics nor emitted in src/)")
    named = set()
    for grp in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", bare):
        named |= {x.strip() for x in grp.split(",") if x.strip()}
    named |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*\"", bare))
    for lab in sorted(named - labels):
        problems.append(f"{where}: unknown label {lab!r} (tierdns sets {', '.join(sorted(labels - {'__name__'}))})")

for pid, title, ref, expr, legend in exprs:
    where = f"panel {pid} {title!r} query {ref}"
    check_names(expr, where)
    for lab in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
        if lab not in labels:
            problems.append(f"{where}: legend uses unknown label {lab!r}")
for name, v in variables.items():
    q = query_of(v)
    if v.get("type") == "query":
        check_names(q, f"variable ${name}")
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q, re.S)
        if m and m.group(2) not in labels:
            problems.append(f"variable ${name}: unknown label {m.group(2)!r}")
        substitute(q, f"variable ${name}", problems)
if problems:
    for m in problems: bad(m)
    problems = []
else:
    used = sorted({n for _, _, _, e, _ in exprs for n in re.findall(r"\btierdns_\w+", e)})
    ok(f"{len(exprs)} queries name only exported metrics ({len(used)} distinct) and known labels")

# --- rule file for promtool -----------------------------------------------------
lines = ["groups:", "  - name: dashboard", "    rules:"]
for pid, title, ref, expr, _ in exprs:
    where = f"panel {pid} {title!r} query {ref}"
    record = f"dashboard:panel_{pid}:expr_{re.sub(r'[^A-Za-z0-9_]', '_', ref)}"
    lines.append(f"      - record: {record}")
    lines.append(f"        expr: {json.dumps(substitute(expr, where, problems))}")
for name, v in variables.items():
    # label_values(selector, label) is Grafana's; its selector must still be PromQL.
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query_of(v), re.S)
    if v.get("type") == "query" and m:
        lines.append(f"      - record: dashboard:variable_{name}:selector")
        lines.append(f"        expr: {json.dumps(substitute(m.group(1), f'variable ${name}', []))}")
if problems:
    for m in problems: bad(m)
else:
    ok("every Grafana variable used is defined")
pathlib.Path(rules_path).write_text("\n".join(lines) + "\n")
print(f"RULES: {len(exprs)}")
PY

while IFS= read -r line; do
    case $line in
        PASS:*) pass "${line#PASS: }" ;;
        FAIL:*) fail "${line#FAIL: }" ;;
        RULES:*) ;;
        *) fail "dashboard reader: $line" ;;
    esac
done <"$WORK/py.txt"

if [ -s "$WORK/rules.yml" ]; then
    n=$(grep -c '^      - record:' "$WORK/rules.yml" || true)
    if promtool check rules "$WORK/rules.yml" >"$WORK/promtool.txt" 2>&1; then
        pass "promtool check rules accepts all $n expressions (as recording rules, variables substituted)"
    else
        fail "promtool check rules rejects the dashboard's PromQL:"
        sed 's/^/    /' "$WORK/promtool.txt"
        # Show the offending expressions by record name, so the panel is easy to find.
        { grep -oE 'dashboard:[a-z]+_[A-Za-z0-9_]+:[A-Za-z0-9_]+' "$WORK/promtool.txt" || true; } |
            sort -u | while read -r rec; do
                grep -A1 -F "record: $rec" "$WORK/rules.yml" | tail -1 | sed "s/^ *expr: /    $rec = /"
            done
    fi
elif [ "$FAILED" -eq 0 ]; then
    fail "no expressions found to check"
fi
summary
