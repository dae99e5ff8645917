#!/usr/bin/env python3
"""Checks that a checkpoint written by adamjit is a valid safetensors file.

usage: check_safetensors.py CHECKPOINT_WRITER SCRATCH_DIR

Runs the writer, then parses its file strictly by the safetensors layout rules with the
standard library alone, checks the adamjit key names, metadata and values against the
writer's OUTFILE.expect.json, and, when the `safetensors` and `numpy` packages are
importable, also loads the file with safetensors.numpy.load_file. Exit 0 on success,
1 with a message on failure.

8-bit state is read as bitsandbytes stores it: U8 codes (state1/2/3), F32 absmax per block
(absmax1/2/3) and the two dynamic maps (qmap1 signed, qmap2 unsigned); a code decodes to
qmap[code] * absmax[j // block].
"""
import json
import os
import struct
import subprocess
import sys

# safetensors dtypes and their element sizes (the package's own list)
DTYPE_SIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
MAX_HEADER = 100_000_000


class Failure(Exception):
    pass


def need(cond, msg):
    if not cond:
        raise Failure(msg)


def parse_layout(blob):
    """Returns (header dict, data bytes) after checking every safetensors layout rule."""
    need(len(blob) >= 8, f"file has {len(blob)} bytes, fewer than the 8-byte header length")
    (n,) = struct.unpack("<Q", blob[:8])
    need(0 < n <= MAX_HEADER, f"header length {n} out of range")
    need(8 + n <= len(blob), f"header length {n} runs past the end of the {len(blob)}-byte file")
    need((8 + n) % 8 == 0, f"data does not start 8-aligned (8 + header length {n})")
    raw = blob[8:8 + n]
    text = raw.decode("utf-8")
    need(text.startswith("{"), "header does not start with '{'")
    stripped = text.rstrip(" ")
    need(len(text) - len(stripped) < 8, "header padding is longer than alignment needs")

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        need(len(keys) == len(set(keys)), f"duplicate keys in header: {keys}")
        return dict(pairs)

    header = json.loads(stripped, object_pairs_hook=no_duplicates)
    need(isinstance(header, dict), "header is not a JSON object")
    data = blob[8 + n:]

    meta = header.get("__metadata__")
    if meta is not None:
        need(isinstance(meta, dict), "__metadata__ is not an object")
        for k, v in meta.items():
            need(isinstance(v, str), f"__metadata__[{k!r}] is not a string")

    spans = []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        need(isinstance(e, dict), f"{name}: entry is not an object")
        need(set(e) == {"dtype", "shape", "data_offsets"}, f"{name}: entry keys are {sorted(e)}")
        need(e["dtype"] in DTYPE_SIZE, f"{name}: unknown dtype {e['dtype']!r}")
        shape = e["shape"]
        need(isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                             for d in shape), f"{name}: bad shape {shape!r}")
        offs = e["data_offsets"]
        need(isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs),
             f"{name}: bad data_offsets {offs!r}")
        begin, end = offs
        numel = 1
        for d in shape:
            numel *= d
        need(0 <= begin <= end, f"{name}: data_offsets {offs} out of order")
        need(end - begin == numel * DTYPE_SIZE[e["dtype"]],
             f"{name}: {end - begin} bytes for {numel} x {e['dtype']}")
        spans.append((begin, end, name))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        need(begin == pos, f"{name}: starts at {begin}, previous entry ends at {pos} (gap or overlap)")
        pos = end
    need(pos == len(data), f"entries cover {pos} data bytes, the file has {len(data)}")
    return header, data


def f32_bits(x):
    return struct.pack("<f", x)


def f32(x):
    """x rounded to float32, as the C library computes a float product."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def floats_of(header, data, name):
    e = header[name]
    need(e["dtype"] == "F32", f"{name}: dtype {e['dtype']}, expected F32")
    begin, end = e["data_offsets"]
    return struct.unpack(f"<{(end - begin) // 4}f", data[begin:end])


def check_qmap(name, kind, q):
    """The shape of bitsandbytes' dynamic maps (SPEC 3)."""
    need(len(q) == 256, f"{name}: {len(q)} values")
    need(all(a < b for a, b in zip(q, q[1:])), f"{name}: not strictly ascending")
    need(q[255] == 1.0, f"{name}[255] = {q[255]!r}, expected 1.0")
    if kind == "signed":
        need(q[127] == 0.0 and f32_bits(q[127]) == f32_bits(0.0), f"{name}[127] = {q[127]!r}, expected 0.0")
        need(abs(q[0] + 0.99296875) < 1e-6, f"{name}[0] = {q[0]!r}, expected about -0.99296875")
        need(all(x < 0 for x in q[:127]) and all(x > 0 for x in q[128:]), f"{name}: signs out of place")
    else:
        need(q[0] == 0.0 and f32_bits(q[0]) == f32_bits(0.0), f"{name}[0] = {q[0]!r}, expected 0.0")
        need(all(x > 0 for x in q[1:]), f"{name}: not positive after index 0")


def check_codes(name, want, header, data, codes):
    """8-bit state: the codes decode to the values read_state gave, near the unquantized reference."""
    dec = want["decode"]
    qmap = floats_of(header, data, dec["qmap"])
    absmax = floats_of(header, data, dec["absmax"])
    block = dec["block"]
    need(len(absmax) == (len(codes) + block - 1) // block,
         f"{dec['absmax']}: {len(absmax)} values for {len(codes)} codes in blocks of {block}")
    got = [f32(qmap[c] * absmax[j // block]) for j, c in enumerate(codes)]
    bad = [j for j, (a, b) in enumerate(zip(got, want["values"])) if f32_bits(a) != f32_bits(b)]
    need(not bad, f"{name}: code {codes[bad[0]] if bad else None} at {bad[:1]} decodes to "
                  f"{got[bad[0]] if bad else None}, read_state gave {want['values'][bad[0]] if bad else None}")
    tol = want["ref_tol"]
    bad = [j for j, (a, r) in enumerate(zip(got, want["reference"])) if abs(a - r) > tol * absmax[j // block]]
    need(not bad, f"{name}: element {bad[:1]} decodes to {got[bad[0]] if bad else None}, the unquantized "
                  f"moment is {want['reference'][bad[0]] if bad else None} (block absmax "
                  f"{absmax[bad[0] // block] if bad else None})")
    need(sum(1 for x in got if x != 0.0) > len(got) // 2, f"{name}: mostly zero")


def check_absmax(name, want, header, data, expect):
    """Each absmax is the block's largest magnitude: the element that had it decodes to
    +absmax (code of 1.0) or -0.99296875 * absmax (the signed map's lowest code)."""
    absmax = floats_of(header, data, name)
    src = expect["keys"][want["absmax_of"]]
    block = src["decode"]["block"]
    vals = src["values"]
    for b, a in enumerate(absmax):
        top = max(abs(f32(x)) for x in vals[b * block:(b + 1) * block])  # printed with 9 digits
        need(a > 0 and a == a and a != float("inf"), f"{name}[{b}] = {a!r}, expected a positive finite float")
        need(0.99 * a <= top <= a, f"{name}[{b}] = {a!r} but the block's largest decoded magnitude is {top!r}")


def check_contents(header, data, expect):
    meta = header.get("__metadata__")
    need(meta is not None, "no __metadata__")
    need(meta.get("format") == "adamjit-optimizer", f"format is {meta.get('format')!r}")
    need(meta.get("format_version") == "1", f"format_version is {meta.get('format_version')!r}")
    need(meta.get("checksum", "").startswith("xxh3-64:") and len(meta["checksum"]) == 8 + 16,
         f"checksum is {meta.get('checksum')!r}")
    int(meta["checksum"][8:], 16)
    need("adamjit_version" in meta, "no adamjit_version")

    groups = json.loads(meta["param_groups"])
    need(len(groups) == len(expect["groups"]), f"{len(groups)} param_groups, expected {len(expect['groups'])}")
    for g, (got, want) in enumerate(zip(groups, expect["groups"])):
        for field in ("lr", "eps", "weight_decay"):
            # exact in fp32: the number read as a double and rounded to fp32 is the saved value
            need(isinstance(got[field], (int, float)) and not isinstance(got[field], bool),
                 f"param_groups[{g}].{field} = {got[field]!r} is not a number")
            need(f32_bits(got[field]) == f32_bits(want[field]),
                 f"param_groups[{g}].{field} = {got[field]!r}, expected {want[field]!r}")
        need([f32_bits(b) for b in got["betas"]] == [f32_bits(b) for b in want["betas"]],
             f"param_groups[{g}].betas = {got['betas']}, expected {want['betas']}")
        need(got["amsgrad"] is want["amsgrad"], f"param_groups[{g}].amsgrad = {got['amsgrad']!r}")

    tensors = json.loads(meta["tensors"])
    need(len(tensors) == expect["tensor_count"], f"{len(tensors)} tensors in metadata")
    for i, t in enumerate(tensors):
        for field in ("name", "numel", "param_dtype", "grad_dtype", "group", "state_bits", "block_wise",
                      "block_size", "percentile_clipping"):
            need(field in t, f"tensors[{i}] lacks {field}")
        need(t["name"] == expect["names"][i], f"tensors[{i}].name = {t['name']!r}")

    keys = set(header) - {"__metadata__"}
    need(keys == set(expect["keys"]), f"keys differ: extra {sorted(keys - set(expect['keys']))}, "
                                      f"missing {sorted(set(expect['keys']) - keys)}")
    for name, want in expect["keys"].items():
        e = header[name]
        need(e["dtype"] == want["dtype"], f"{name}: dtype {e['dtype']}, expected {want['dtype']}")
        need(e["shape"] == want["shape"], f"{name}: shape {e['shape']}, expected {want['shape']}")
        begin, end = e["data_offsets"]
        need(begin % DTYPE_SIZE[e["dtype"]] == 0, f"{name}: offset {begin} not aligned to its element size")
        raw = data[begin:end]
        if "value" in want:
            (v,) = struct.unpack("<q", raw)
            need(v == want["value"], f"{name}: {v}, expected {want['value']}")
            continue
        if e["dtype"] == "U8":
            check_codes(name, want, header, data, raw)
            continue
        if "absmax_of" in want:
            check_absmax(name, want, header, data, expect)
            continue
        got = struct.unpack(f"<{len(raw) // 4}f", raw)
        if "qmap" in want:
            check_qmap(name, want["qmap"], got)
        if "values" in want:
            bad = [j for j, (a, b) in enumerate(zip(got, want["values"])) if f32_bits(a) != f32_bits(b)]
            need(not bad, f"{name}: element {bad[:1]} is {got[bad[0]] if bad else None}, "
                          f"expected {want['values'][bad[0]] if bad else None}")
        else:
            rtol = want["rtol"]
            bad = [j for j, (a, b) in enumerate(zip(got, want["approx"])) if abs(a - b) > rtol * abs(b)]
            need(not bad, f"{name}: element {bad[:1]} is {got[bad[0]] if bad else None}, "
                          f"expected about {want['approx'][bad[0]] if bad else None}")


def check_with_package(path, header, data):
    try:
        import numpy as np
        from safetensors.numpy import load_file
    except ImportError:
        print("safetensors package not installed: layout checked by the stdlib reader only")
        return
    loaded = load_file(path)
    need(set(loaded) == set(header) - {"__metadata__"}, "safetensors.numpy.load_file found other keys")
    for name, arr in loaded.items():
        begin, end = header[name]["data_offsets"]
        need(list(arr.shape) == header[name]["shape"], f"{name}: safetensors shape {arr.shape}")
        need(arr.tobytes() == data[begin:end], f"{name}: safetensors bytes differ")
    print(f"safetensors.numpy.load_file agrees ({len(loaded)} tensors, numpy {np.__version__})")


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 1
    writer, scratch = sys.argv[1], sys.argv[2]
    os.makedirs(scratch, exist_ok=True)
    path = os.path.join(scratch, "writer.safetensors")
    for p in (path, path + ".expect.json"):
        if os.path.exists(p):
            os.remove(p)
    try:
        run = subprocess.run([writer, path], capture_output=True, text=True, timeout=120)
        need(run.returncode == 0, f"{writer} exited {run.returncode}: {run.stderr.strip()}")
        with open(path, "rb") as f:
            blob = f.read()
        with open(path + ".expect.json") as f:
            expect = json.load(f)
        header, data = parse_layout(blob)
        check_contents(header, data, expect)
        check_with_package(path, header, data)
    except (Failure, ValueError, KeyError, TypeError, OSError, subprocess.SubprocessError) as e:
        print(f"check_safetensors: FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"check_safetensors: OK ({len(blob)} bytes, {len(header) - 1} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
