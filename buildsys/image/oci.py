"""The OCI image layout, written directly: blobs named by digest, the config (fixed `created` and history),
the manifest and index.json, all as canonical JSON, so the same layers give the same digests.

Why not `umoci repack`: each repack diffs the bundle against the image it was unpacked from unless
`--refresh-bundle` is given, so every repack of one bundle replaced the last and the image ended as a single
layer holding everything; and umoci stamps `created` in the config and every history entry with the wall
clock and packs the files' real mtimes. Writing the layers and the JSON here leaves nothing to chance and
needs no tool, so the same code is tested on a tiny tree. umoci still unpacks the finished layout for the
verification, which also proves the layout is well-formed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostpgo.fsutil import write_bytes

from .layers import LayerBlob
from .model import ImageError

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class ImageDigests:
    """What identifies a finished image: a registry or `docker load` reuses any layer it already has."""

    manifest: str
    """`sha256:...` of the manifest (the image's id in a registry)."""
    config: str
    """`sha256:...` of the config (docker's image id)."""
    layers: tuple[LayerBlob, ...]
    """Bottom to top."""

    def record(self) -> dict[str, Any]:
        return {"manifest_digest": self.manifest, "config_digest": self.config,
                "layers": [layer.record() for layer in self.layers]}


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace: one byte string per value."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def blobs_dir(layout: Path) -> Path:
    return layout / "blobs" / "sha256"


def init_layout(layout: Path) -> Path:
    """An empty OCI layout (oci-layout file and the blob directory); returns the blob directory."""
    blobs_dir(layout).mkdir(parents=True, exist_ok=True)
    write_bytes(layout / "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
    return blobs_dir(layout)


def write_blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    write_bytes(blobs_dir(layout) / digest.split(":", 1)[1], data)
    return digest, len(data)


def image_config(layers: Sequence[LayerBlob], *, created: str, architecture: str, entrypoint: Sequence[str],
                 cmd: Sequence[str], env: Mapping[str, str], workdir: str, labels: Mapping[str, str],
                 author: str = "hostpgo") -> dict[str, Any]:
    """The image config: run settings, the layers' diff_ids and one history entry per layer, all dated
    `created` (the fixed epoch), so the config is a function of its inputs only."""
    return {"created": created, "author": author, "architecture": architecture, "os": "linux",
            "config": {"Entrypoint": list(entrypoint), "Cmd": list(cmd),
                       "Env": [f"{k}={v}" for k, v in env.items()], "WorkingDir": workdir, "Labels": dict(labels)},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created": created, "created_by": f"hostpgo image: {layer.name} layer",
                         "comment": layer.comment} for layer in layers]}


def write_image(layout: Path, layers: Sequence[LayerBlob], config: Mapping[str, Any], tag: str) -> ImageDigests:
    """Write config, manifest and index.json (one image, tagged `tag`) for layers already in the layout."""
    for layer in layers:
        if not (blobs_dir(layout) / layer.digest.split(":", 1)[1]).is_file():
            raise ImageError(f"{layout}: layer {layer.name} ({layer.digest}) is not in the layout")
    config_digest, config_size = write_blob(layout, canonical_json(config))
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_size},
                "layers": [{"mediaType": MEDIA_LAYER, "digest": layer.digest, "size": layer.size}
                           for layer in layers]}
    manifest_digest, manifest_size = write_blob(layout, canonical_json(manifest))
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX,
             "manifests": [{"mediaType": MEDIA_MANIFEST, "digest": manifest_digest, "size": manifest_size,
                            "annotations": {REF_NAME: tag}}]}
    write_bytes(layout / "index.json", canonical_json(index))
    return ImageDigests(manifest=manifest_digest, config=config_digest, layers=tuple(layers))


def read_image(layout: Path, tag: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(manifest digest, manifest, config) of the image tagged `tag` in the layout."""
    index = json.loads((layout / "index.json").read_text())
    for m in index.get("manifests", []):
        if (m.get("annotations") or {}).get(REF_NAME) == tag:
            manifest = json.loads((blobs_dir(layout) / m["digest"].split(":", 1)[1]).read_text())
            config = json.loads((blobs_dir(layout) / manifest["config"]["digest"].split(":", 1)[1]).read_text())
            return m["digest"], manifest, config
    raise ImageError(f"{layout}: no image tagged {tag!r} in index.json")
