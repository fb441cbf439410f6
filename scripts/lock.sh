#!/usr/bin/env bash
# Re-resolve the locks (`make lock`): Python 3.11, Linux x86_64, with pip-tools' pip-compile, which
# resolves with pip itself and pip's configuration, so torch resolves to the CPU wheel pip installs
# (uv does not read pip's find-links). The other files have lock.txt's versions: runtime-cpu.txt
# and serve.txt are subsets of it (scripts/lockfile.py: the closure of their roots, no resolver),
# the two that add packages are compiled with it as a constraint.
#   lock.txt           the project + dev extra: .venv (`make install`), CI
#   runtime-cpu.txt    the project: the pipeline image (Dockerfile, default VARIANT=cpu)
#   runtime-gpu.txt    the project with PyPI's CUDA torch: the pipeline image, VARIANT=gpu
#   serve.txt          the Bento's packages (serve.in), pins without hashes: bentofile.yaml
#   mlflow-server.txt  the MLflow server image (mlflow-server.in)
# UPGRADE: empty keeps every pin that still satisfies pyproject.toml (adding a dependency touches
# nothing else); "-P uvicorn" upgrades one package; "--upgrade" re-resolves everything.
set -euo pipefail
cd "$(dirname "$0")/.."
# (not PIP_COMPILE: pip reads every PIP_* variable as one of its options)
COMPILER=${COMPILER:-.venv/bin/pip-compile}
UPGRADE=${UPGRADE:-}
R=requirements
compile() {
  "$COMPILER" --quiet --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
    --no-emit-options "$@"
}
[[ "$(python3 -c 'import platform, sys; print(sys.version_info[:2] == (3, 11) and platform.machine())')" == x86_64 ]] \
  || echo "warning: the locks are for Python 3.11 on x86_64; this is not that" >&2

echo "lock.txt (project + dev) ..."
# shellcheck disable=SC2086
compile --generate-hashes $UPGRADE --extra dev -o $R/lock.txt pyproject.toml
echo "runtime-cpu.txt, serve.txt (subsets) ..."
PY=${PY:-.venv/bin/python}
"$PY" scripts/lockfile.py subset $R/lock.txt --roots-from pyproject.toml -o $R/runtime-cpu.txt \
  --title "The pipeline image with CPU torch (Dockerfile, VARIANT=cpu): the project without dev."
"$PY" scripts/lockfile.py subset $R/lock.txt --roots-from $R/serve.in --no-hashes -o $R/serve.txt \
  --title "The Bento (bentofile.yaml): the packages in serve.in and what they need."
echo "mlflow-server.txt ..."
compile --generate-hashes -c $R/lock.txt -o $R/mlflow-server.txt $R/mlflow-server.in
echo "runtime-gpu.txt (PyPI's CUDA torch) ..."
# Without pip's configuration (the machine's CPU wheel) and with every pin but torch's.
grep -v '^torch==' $R/lock.txt | sed '/^    --hash/d; s/ \\$//' > $R/.lock-no-torch.txt
trap 'rm -f $R/.lock-no-torch.txt' EXIT
PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS='' \
  compile --generate-hashes -c $R/.lock-no-torch.txt -o $R/runtime-gpu.txt pyproject.toml
sed -i 's#requirements/\.lock-no-torch\.txt#requirements/lock.txt (all but torch)#' $R/runtime-gpu.txt
