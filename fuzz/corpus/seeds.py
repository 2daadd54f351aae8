#!/usr/bin/env python3
"""Writes the seed inputs of each fuzz target (fuzz/corpus/<target>/):
well-formed requests and documents the fuzzer mutates from, so it starts
past the first field check. Run from anywhere; it rewrites the seeds."""
import hashlib
import json
import pathlib
import shutil

ROOT = pathlib.Path(__file__).resolve().parent


def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, value):
    """A protobuf field: int is a varint, bytes/str/list-of-parts length-delimited."""
    if isinstance(value, bool) or isinstance(value, int):
        return varint(number << 3) + varint(int(value))
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value


def message(*fields):
    return b"".join(field(n, v) for n, v in fields)


def map_entries(number, mapping):
    return [(number, message((1, k), (2, v))) for k, v in mapping.items()]


def mount_cap(mode=1, fs="ext4", flags=()):
    return message((2, message((1, fs), *[(2, f) for f in flags])), (3, message((1, mode))))


def block_cap(mode=1):
    return message((1, b""), (3, message((1, mode))))


def capacity(required, limit=0):
    return message((1, required), (2, limit))


def digest(name):
    return hashlib.sha256(name.encode()).hexdigest()[:32]


LOCAL = "local:" + digest("pvc-1")
SNAPSHOT = "local:snap-" + digest("snap-1")
RBD = "rbd:ceph-a:rbd:swell-" + digest("pvc-2")
KUBELET = "/var/lib/kubelet/plugins/kubernetes.io/csi/swell.csi.storage/abc/globalmount"
TARGET = "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/pvc-1/mount"

# Controller RPCs by the index the target picks them with (first byte).
CONTROLLER = {
    "create_volume": (0, message((1, "pvc-1"), (2, capacity(8 << 20)), (3, mount_cap()), *map_entries(4, {"backend": "local"}))),
    "create_block_volume": (0, message((1, "pvc-3"), (2, capacity(8 << 20, 16 << 20)), (3, block_cap(7)))),
    "create_from_snapshot": (0, message((1, "pvc-4"), (3, mount_cap(fs="xfs")), (6, message((1, message((1, SNAPSHOT))))))),
    "delete_volume": (1, message((1, LOCAL))),
    "publish": (2, message((1, LOCAL), (2, "node-1"))),
    "unpublish": (3, message((1, LOCAL), (2, "node-1"))),
    "validate_capabilities": (4, message((1, LOCAL), (3, mount_cap(2, "btrfs", ["noatime"])))),
    "list_volumes": (5, message((1, 2), (2, "1"))),
    "get_capacity": (6, message((1, mount_cap()), *map_entries(2, {"backend": "local"}))),
    "get_capabilities": (7, b""),
    "create_snapshot": (8, message((1, LOCAL), (2, "snap-1"))),
    "delete_snapshot": (9, message((1, SNAPSHOT))),
    "list_snapshots": (10, message((1, 5), (3, LOCAL))),
    "get_snapshot": (11, message((1, SNAPSHOT))),
    "expand_volume": (12, message((1, LOCAL), (2, capacity(16 << 20)), (4, mount_cap()))),
    "get_volume": (13, message((1, LOCAL))),
    "modify_volume": (14, message((1, LOCAL), *map_entries(3, {"iops": "100"}))),
}

NODE = {
    "stage": (0, message((1, LOCAL), (3, KUBELET), (4, mount_cap(1, "ext4", ["noatime", "ro"])))),
    "stage_rbd": (0, message((1, RBD), (3, KUBELET), (4, block_cap()), *map_entries(6, {"mounter": "rbd-nbd", "mapOptions": "krbd:lock_on_read"}))),
    "unstage": (1, message((1, LOCAL), (2, KUBELET))),
    "publish": (2, message((1, LOCAL), (3, KUBELET), (4, TARGET), (5, mount_cap(2, "xfs")), (6, True))),
    "unpublish": (3, message((1, LOCAL), (2, TARGET))),
    "stats": (4, message((1, LOCAL), (2, TARGET))),
    "expand": (5, message((1, LOCAL), (2, TARGET), (3, capacity(1 << 30, 2 << 30)))),
}

MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "97 22 7:3 / /var/lib/kubelet/plugins/x/globalmount rw,nosuid,nodev - xfs /dev/loop3 rw,attr2\n"
    "98 97 0:5 /loop3 /var/lib/kubelet/pods/u/volumes/b rw master:2 - devtmpfs udev rw\n"
    "99 22 0:44 / /mnt/with\\040space rw - tmpfs tmpfs rw\n"
)


def hpack_literal(name, value):
    """A literal header field without indexing, new name (RFC 7541 6.2.2)."""
    return bytes([0]) + bytes([len(name)]) + name + bytes([len(value)]) + value


def hpack_indexed_literal(name, value):
    """A literal header field with incremental indexing, new name (RFC 7541 6.2.1)."""
    return bytes([0x40]) + bytes([len(name)]) + name + bytes([len(value)]) + value


def frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def authority_stream(authority, split):
    block = b"\x83\x86" + hpack_literal(b":authority", authority) + hpack_literal(b":path", b"/csi.v1.Node/NodeGetInfo")
    frames = frame(4, 0, 0, b"")  # SETTINGS
    if split:
        frames += frame(1, 0x20, 1, bytes(5) + block[:6]) + frame(9, 0x4, 1, block[6:])
    else:
        frames += frame(1, 0x4 | 0x8, 1, bytes([3]) + block + bytes(3))
    return b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frames + frame(0, 1, 1, b"\0\0\0\0\0")


def dynamic_table_stream():
    """Two requests on one connection: the first sizes the dynamic table and
    adds the socket-path authority to it, the second names it by index (62)."""
    first = b"\x3f\xe1\x1f\x83\x86" + hpack_indexed_literal(b":authority", b"%2Fcsi%2Fcsi.sock")
    second = b"\x83\x86\xbe" + hpack_literal(b":path", b"/csi.v1.Identity/Probe")
    return (
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + frame(4, 0, 0, b"")
        + frame(1, 0x5, 1, first)
        + frame(1, 0x5, 3, second)
    )


ENTRY = {
    "name": "pvc-2",
    "phase": "ready",
    "volume_id": RBD,
    "desired_bytes": 2 << 30,
    "current_bytes": 1 << 30,
    "announced_bytes": 1 << 30,
    "last_error": None,
    "desired_since_unix": 1700000000,
    "updated_unix": 1700000001,
    "generation": 3,
}
SNAPSHOT_ENTRY = {
    "name": "snap-1",
    "source_volume": RBD,
    "source_image": "swell-" + digest("pvc-2"),
    "source_image_id": "10ab2c",
    "size_bytes": 1 << 30,
    "created_unix_nanos": 1,
    "phase": "creating",
    "depth": 1,
    "updated_unix": 1700000002,
    "generation": 1,
}

SEEDS = {
    "csi_controller": {name: bytes([i]) + body for name, (i, body) in CONTROLLER.items()},
    "csi_node": {name: bytes([i]) + body for name, (i, body) in NODE.items()},
    "quantity": {q: q.encode() for q in ["10Gi", "1.5G", "100M", "1e3", "512", "0.5Ki", "100m", "1E"]},
    "mountinfo": {"proc_self_mountinfo": MOUNTINFO.encode()},
    "authority": {
        "socket_path_authority": bytes([255]) + authority_stream(b"/csi/csi.sock", False),
        "continued_block_small_reads": bytes([7]) + authority_stream(b"localhost", True),
        "dynamic_table_second_request": bytes([64]) + dynamic_table_stream(),
    },
    "rbd_state": {
        "volume_entry": b"\0" + json.dumps(ENTRY).encode(),
        "snapshot_entry": b"\1" + json.dumps(SNAPSHOT_ENTRY).encode(),
        "total": b"\2" + b"3221225472",
    },
    "ids": {
        "local": LOCAL.encode(),
        "rbd": RBD.encode(),
        "local_snapshot": SNAPSHOT.encode(),
        "rbd_snapshot": ("rbd:ceph-a:rbd:snap-" + digest("snap-2")).encode(),
    },
}

for target, seeds in SEEDS.items():
    out = ROOT / target
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for name, data in seeds.items():
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
        (out / safe).write_bytes(data)
# The webhook's own recorded reviews are the AdmissionReview seeds.
out = ROOT / "admission_review"
shutil.rmtree(out, ignore_errors=True)
out.mkdir()
for review in sorted((ROOT.parent.parent / "webhook" / "testdata").glob("*.json")):
    shutil.copy(review, out / review.name)
