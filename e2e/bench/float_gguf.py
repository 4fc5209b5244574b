#!/usr/bin/env python3
"""Writes a copy of a GGUF model with its matrices stored as F16 or BF16.

No registry package ships a small F16 or BF16 model, so the bench makes one
from a quantized fixture: every quantized matrix is dequantized (with
gguf-py, llama.cpp's own reader) and stored as F16 or BF16; F32 tensors
(norms) and the metadata are copied as they are. The result is a model
llama.cpp and rbee both load, with the weights in the layout F16/BF16 GGUF
files from Hugging Face have.

    float_gguf.py IN.gguf OUT.gguf f16|bf16
"""
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q, GGUFReader, GGUFValueType, GGUFWriter


def main():
    if len(sys.argv) != 4 or sys.argv[3] not in ("f16", "bf16"):
        sys.exit(__doc__)
    src, dst, kind = sys.argv[1:]
    target = Q.F16 if kind == "f16" else Q.BF16
    r = GGUFReader(src)
    w = GGUFWriter(dst, r.fields["general.architecture"].contents())
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == "general.file_type":
            # llama_ftype: MOSTLY_F16 = 1, MOSTLY_BF16 = 32.
            w.add_uint32(name, 1 if kind == "f16" else 32)
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(name, field.contents(), vtype, sub_type=sub)
    for t in r.tensors:
        if t.tensor_type in (Q.F32, Q.F16, Q.BF16) or len(t.shape) < 2:
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
            continue
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        if target == Q.F16:
            w.add_tensor(t.name, values.astype(np.float16))
        else:
            w.add_tensor(t.name, gguf.quants.quantize(values, Q.BF16), raw_dtype=Q.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
