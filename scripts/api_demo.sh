#!/usr/bin/env bash
# The API acceptance scenario end to end: start the server, create an owner key and a screener
# key, register 60 O'Neill tunes as the owner (MIDI files over HTTP), check the bundled copied
# phrase as the screener, try a cross-tenant delete, stop the server.
# Usage: bash scripts/api_demo.sh [DIR] [PORT]   (after `bash scripts/setup.sh` or command 1)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-api-demo}
PORT=${2:-8765}
MG=.venv/bin/melodyguard
rm -rf "$DIR" && mkdir -p "$DIR/works" && DIR=$(cd "$DIR" && pwd)
export MELODYGUARD_CATALOGUE="$DIR/catalogue"
.venv/bin/python - "$DIR/works" <<'PY'
import json, sys
from pathlib import Path
from melodyguard.corpus import build_corpus, load_corpus
from melodyguard.model.generate import melody_to_midi
src = json.loads((Path("melodyguard/examples/copied_phrase.json")).read_text())["source_key"]
build_corpus(collections=["oneills1850"], limit=400, progress=False)
tunes = sorted(load_corpus(collections=["oneills1850"]), key=lambda t: (t.key != src, t.key))[:60]
for i, t in enumerate(tunes):
    (Path(sys.argv[1]) / f"{i:03d}.mid").write_bytes(melody_to_midi(t.melody, tempo_bpm=110))
    (Path(sys.argv[1]) / f"{i:03d}.title").write_text(t.title)
PY
OWNER=$($MG keys create --role owner --owner "Acme Music" | head -1)
OTHER=$($MG keys create --role owner --owner "Other Label" | head -1)
SCREENER=$($MG keys create --role screener | head -1)
$MG serve --port "$PORT" --workers 2 > "$DIR/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "localhost:$PORT/readyz" >/dev/null && break; sleep 0.5; done
for f in "$DIR"/works/*.mid; do
  curl -sf -H "X-API-Key: $OWNER" -F "file=@$f" -F "title=$(cat "${f%.mid}.title")" "localhost:$PORT/v1/works" >/dev/null
done
echo "registered: $(curl -s -H "X-API-Key: $OWNER" "localhost:$PORT/v1/works?limit=1" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["total"])') works"
curl -s -H "X-API-Key: $SCREENER" -F "file=@melodyguard/examples/copied_phrase.mid" "localhost:$PORT/v1/checks" > "$DIR/report.json"
curl -s -H "X-API-Key: $SCREENER" -F "file=@melodyguard/examples/copied_phrase.mid" "localhost:$PORT/v1/checks?format=html" > "$DIR/report.html"
.venv/bin/python - "$DIR/report.json" <<'PY'
import json, sys
from melodyguard.evidence import match_sentence
rep = json.load(open(sys.argv[1]))
print("verdict:", rep["verdict"].upper())
for m in rep["matches"][:1]:
    print(" ", match_sentence(m) + f"; E-value {m['score']['evalue']:.3g}")
PY
code=$(curl -s -o /dev/null -w '%{http_code}' -X DELETE -H "X-API-Key: $OTHER" "localhost:$PORT/v1/works/1")
echo "cross-tenant delete of work 1 by another owner: HTTP $code"
echo "evidence page: $DIR/report.html"
