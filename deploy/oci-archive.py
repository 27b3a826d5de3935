#!/usr/bin/env python3
"""Writes a one-layer OCI image archive (an OCI image layout in a tar file)
from a root filesystem directory, without any container runtime.

Usage: oci-archive.py ROOTFS OUT.tar REF
  REF is the image name:tag recorded in the archive (org.opencontainers.image.ref.name).
The image runs /usr/local/bin/tern as user 10001:10001, like deploy/Dockerfile.
Load or push it with `podman load -i OUT.tar`, or
`skopeo copy oci-archive:OUT.tar docker://REGISTRY/tern:TAG`.
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import time

rootfs, out, ref = sys.argv[1], sys.argv[2], sys.argv[3]
UID = 10001
EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or int(time.time())


def owner(info):
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if info.name.lstrip("./").startswith("var/lib/tern"):
        info.uid = info.gid = UID
    info.mtime = EPOCH
    return info


raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
    for name in sorted(os.listdir(rootfs)):
        t.add(os.path.join(rootfs, name), arcname=name, filter=owner)
diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
layer = gzip.compress(raw.getvalue(), mtime=EPOCH)

ports = [2525, 2587, 2465, 1143, 1993, 1110, 1995, 50051, 50052, 50053, 50054, 50055,
         9081, 9082, 9083, 9084, 9085]
config = {
    "architecture": "amd64" if os.uname().machine == "x86_64" else "arm64",
    "os": "linux",
    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH)),
    "config": {
        "User": f"{UID}:{UID}",
        "Entrypoint": ["/usr/local/bin/tern"],
        "Cmd": ["--help"],
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "TERN_DATA_DIR=/var/lib/tern"],
        "ExposedPorts": {f"{p}/tcp": {} for p in ports},
        "Labels": {"org.opencontainers.image.title": "tern"},
    },
    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    "history": [{"created_by": "deploy/oci-archive.py", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH))}],
}
blobs = {}


def blob(data):
    d = hashlib.sha256(data).hexdigest()
    blobs[d] = data
    return {"digest": "sha256:" + d, "size": len(data)}


cfg_desc = blob(json.dumps(config, sort_keys=True).encode())
layer_desc = blob(layer)
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg_desc},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_desc}],
}
man_desc = blob(json.dumps(manifest, sort_keys=True).encode())
index = {
    "schemaVersion": 2,
    "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **man_desc,
                   "annotations": {"org.opencontainers.image.ref.name": ref}}],
}
with tarfile.open(out, "w") as t:
    def put(name, data):
        info = tarfile.TarInfo(name)
        info.size, info.mtime = len(data), EPOCH
        t.addfile(info, io.BytesIO(data))
    put("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    put("index.json", json.dumps(index).encode())
    for d, data in blobs.items():
        put(f"blobs/sha256/{d}", data)
print(f"{out}: {ref}, layer {len(layer) // 1024} KiB compressed, manifest sha256:{man_desc['digest'][7:19]}")
