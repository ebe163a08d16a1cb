# SPDX-License-Identifier: LGPL-2.1-or-later
"""Crafted VDI images for the parent-search tests (our own writer of the
layout in docs/formats/vdi.md; nothing here comes from another project).

make_sparse_chain() writes `depth` VDI images linked by UUID whose headers
each claim a block map of `map_bytes` (64 MiB by default, the library's
limit). The map region is never written: the file size is set past it, so it
is a hole (a few KiB on disk) that reads as zeros. Opening such an image fully
means reading and holding the whole map; identifying it needs the header only.
"""
import os
import struct
import uuid as uuidlib

SIGNATURE = 0xBEDA107F
VERSION_1_1 = 0x00010001
TYPE_NORMAL, TYPE_DIFF = 1, 4
BLOCK_SIZE = 1 << 20
MAP_OFFSET = 512


def header(image_uuid, parent_uuid=None, map_bytes=64 << 20, block_size=BLOCK_SIZE):
    """One 512-byte VDI 1.1 header sector (cbHeader 400). UUIDs are 16 bytes."""
    n_blocks = map_bytes // 4
    off_data = MAP_OFFSET + map_bytes
    h = bytearray(512)
    text = b"<<< crafted test image (map is a hole) >>>\n"
    h[0:len(text)] = text
    struct.pack_into("<IIIII", h, 0x40, SIGNATURE, VERSION_1_1, 400,
                     TYPE_DIFF if parent_uuid else TYPE_NORMAL, 0)
    struct.pack_into("<II", h, 0x154, MAP_OFFSET, off_data)
    struct.pack_into("<IIII", h, 0x15C, 16383, 16, 63, 512)          # PCHS, sector size
    struct.pack_into("<QIII", h, 0x170, n_blocks * block_size, block_size, 0, n_blocks)
    struct.pack_into("<I", h, 0x184, 0)                               # no block allocated
    h[0x188:0x198] = image_uuid
    h[0x198:0x1A8] = uuidlib.uuid4().bytes                            # modification UUID
    if parent_uuid:
        h[0x1A8:0x1B8] = parent_uuid
    struct.pack_into("<IIII", h, 0x1C8, 0, 0, 0, 512)                 # LCHS: none
    return bytes(h), off_data


def write_sparse(path, image_uuid, parent_uuid=None, map_bytes=64 << 20):
    h, off_data = header(image_uuid, parent_uuid, map_bytes)
    with open(path, "wb") as f:
        f.write(h)
        f.truncate(off_data)      # the map region stays a hole


def make_sparse_chain(directory, depth=16, map_bytes=64 << 20, prefix="layer", decoys=4):
    """Writes layer00.vdi (the base) .. layerNN.vdi (the top), plus decoys:
    .vdi files that are no image, a truncated header, and sparse VDIs with
    UUIDs nothing links to. Returns the paths, base first."""
    uuids = [uuidlib.uuid4().bytes for _ in range(depth)]
    paths = []
    for i in range(depth):
        p = os.path.join(directory, "%s%02d.vdi" % (prefix, i))
        write_sparse(p, uuids[i], uuids[i - 1] if i > 0 else None, map_bytes)
        paths.append(p)
    for i in range(decoys):
        p = os.path.join(directory, "decoy%02d.vdi" % i)
        if i % 3 == 0:
            with open(p, "wb") as f:
                f.write(b"not an image at all\n" * 100)
        elif i % 3 == 1:
            h, _ = header(uuidlib.uuid4().bytes, None, map_bytes)
            with open(p, "wb") as f:
                f.write(h[:0x100])       # cut inside the header
        else:
            write_sparse(p, uuidlib.uuid4().bytes, uuidlib.uuid4().bytes, map_bytes)
    return paths
