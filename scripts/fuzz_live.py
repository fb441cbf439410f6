"""The longer API fuzz run against a live service (`make fuzz-live`; not part of `make test`).

    python scripts/fuzz_live.py [--examples 500] [--keep-log serve.log]

Starts `bentoml serve bento.service:RoadSegService` on a free port (workers, uvicorn and the
connection layer, as deployed) serving a seeded random base-4 U-Net checkpoint with an API key,
waits for /readyz, then runs schemathesis' engine from the live `GET /docs.json` with the
configuration of the in-process run (tests/api_fuzz.py: every built-in check but those listed
there with a reason, the key, a fixed seed), `--examples` per operation and phase. Prints the
test cases per operation and every failure with a curl command to reproduce it; exits 1 on any.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from roadseg.testing import params_with, running_service, save_random_checkpoint  # noqa: E402
from tests import api_fuzz  # noqa: E402

KEY = "fuzz-live-key"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=500, help="per operation and phase")
    parser.add_argument("--keep-log", type=Path, help="copy the server's log here")
    args = parser.parse_args()

    import schemathesis

    with tempfile.TemporaryDirectory(prefix="roadseg-fuzz-") as name:
        tmp = Path(name)
        save_random_checkpoint(tmp / "model.pt", base_channels=4, seed=0, epoch=3)
        env = {
            "ROADSEG_MODEL_URI": str(tmp / "model.pt"),
            "ROADSEG_PARAMS": str(params_with(tmp / "params.yaml", {})),
            "ROADSEG_MONITOR_DIR": str(tmp / "monitoring"),
            "ROADSEG_API_KEY": KEY,
            "BENTOML_HOME": str(tmp / "bentoml"),
            "TMPDIR": str(tmp),
        }
        log = tmp / "serve.log"
        started = time.monotonic()
        try:
            with running_service(env, log_path=log) as url:
                print(f"serving at {url} after {time.monotonic() - started:.0f} s", flush=True)
                config = api_fuzz.config(KEY, args.examples, run="live")
                schema = schemathesis.openapi.from_url(f"{url}/docs.json", config=config)
                report = api_fuzz.run(schema)
        finally:
            if args.keep_log and log.exists():
                shutil.copy(log, args.keep_log)
    print(report.summary())
    if report.failures or report.errors:
        print(report.problems())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
