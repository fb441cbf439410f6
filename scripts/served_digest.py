"""The served answers to the real sample, as sha256 digests: run it on two commits and compare, to
show a refactor left behaviour byte-identical.

    python scripts/served_digest.py [--sample ../shared/data/bdd100k-sample] > digest.txt

One fixed model (a seeded random base-4 U-Net checkpoint) is served in-process; each of the 16
real 1280x720 images goes to `POST /segment` (mask, color, overlay, json) and to the original
projects' `/predict-image/returns-zip/` and `/predict/returns-json/` routes.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.inprocess import in_process_service  # noqa: E402

KEY = "digest-key"


def _answers(client, image: Path) -> dict[str, bytes]:
    data = image.read_bytes()
    headers = {"X-API-Key": KEY}
    out = {}
    for fmt in ("mask", "color", "overlay"):
        r = client.post(f"/segment?format={fmt}", content=data,
                        headers={**headers, "Content-Type": "image/jpeg"})  # fmt: skip
        out[f"segment-{fmt}"] = r.status_code.to_bytes(2, "big") + r.content
    r = client.post("/segment/json", content=data,
                    headers={**headers, "Content-Type": "image/jpeg"})  # fmt: skip
    out["segment-json"] = r.status_code.to_bytes(2, "big") + r.content
    r = client.post("/predict-image/returns-zip/", headers=headers,
                    files={"files": (image.name, data, "image/jpeg")})  # fmt: skip
    out["legacy-zip"] = r.status_code.to_bytes(2, "big") + _zip_contents(r.content)
    payload = {"image_names": [image.name], "images": [base64.b64encode(data).decode()]}
    r = client.post("/predict/returns-json/", headers=headers, json=payload)
    out["legacy-json"] = r.status_code.to_bytes(2, "big") + r.content
    return out


def _zip_contents(data: bytes) -> bytes:
    """The members' names and bytes (a ZIP's own bytes carry timestamps)."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return b"".join(n.encode() + z.read(n) for n in sorted(z.namelist()))
    except zipfile.BadZipFile:
        return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = os.environ.get("ROADSEG_SAMPLE_DIR", str(REPO.parent / "shared/data/bdd100k-sample"))
    parser.add_argument("--sample", type=Path, default=Path(default))
    args = parser.parse_args()
    images = sorted(args.sample.glob("images/10k/*/*.jpg"))
    if not images:
        raise SystemExit(f"no images under {args.sample}/images/10k")
    total = hashlib.sha256()
    with (
        tempfile.TemporaryDirectory() as tmp,
        in_process_service(Path(tmp), {}, KEY) as (client, _, _),
    ):
        for image in images:
            for name, body in sorted(_answers(client, image).items()):
                digest = hashlib.sha256(body).hexdigest()
                total.update(digest.encode())
                status = int.from_bytes(body[:2], "big")
                print(f"{image.stem} {name} {status} {len(body) - 2} {digest[:16]}")
    print(f"total {len(images)} images {total.hexdigest()}")


if __name__ == "__main__":
    main()
