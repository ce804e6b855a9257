#!/usr/bin/env bash
# CI: the scoring-only install (docs/deployment.md, "Scoring-only install") in a fresh venv, without
# PyTorch: its size on disk (must stay under 300 MB), predict on a bare .onnx file and one scoring
# request to serve --onnx. Usage: .ci/scoring_only.sh MODEL.onnx IMAGE.png [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$(realpath "$1")
IMAGE=$(realpath "$2")
WORK=${3:-$(mktemp -d)}
PYTHON=${PYTHON:-python3}
LIMIT_MB=300
rm -rf "$WORK/venv"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet --upgrade pip 2>/dev/null || true
"$WORK/venv/bin/python" -m pip install --quiet "$PWD[serve]"
if "$WORK/venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "scoring-only install: torch was installed" >&2
  exit 1
fi
size_mb=$(du -sm "$WORK/venv" | cut -f1)
echo "scoring-only install: ${size_mb} MB on disk (limit ${LIMIT_MB} MB)"
if [ "$size_mb" -ge "$LIMIT_MB" ]; then
  echo "scoring-only install: ${size_mb} MB is over ${LIMIT_MB} MB" >&2
  exit 1
fi
cd "$WORK"
venv/bin/skipganomaly predict "$MODEL" "$IMAGE" --output "$WORK/scores.csv"
head -2 "$WORK/scores.csv"
venv/bin/python - "$MODEL" "$IMAGE" <<'PY'
import json, socket, subprocess, sys, time, urllib.request, uuid

model, image = sys.argv[1:3]
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); port = sock.getsockname()[1]; sock.close()
server = subprocess.Popen([sys.prefix + "/bin/skipganomaly", "serve", "--onnx", model, "--port", str(port)])
try:
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\n').encode()
    body += open(image, "rb").read() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/score", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    result = json.load(urllib.request.urlopen(request, timeout=30))["results"][0]
    assert "score" in result and "torch" not in sys.modules, result
    print("scoring-only install: served score", round(result["score"], 4))
finally:
    server.terminate(); server.wait(timeout=10)
PY
