#!/usr/bin/env python3
"""Decodes one Confluent-framed invalidation notice with fastavro (an
independent implementation) and prints it as JSON.

    read_notice.py HEX
"""
import io
import json
import struct
import sys
from pathlib import Path

import fastavro

schema = fastavro.parse_schema(json.loads((Path(__file__).resolve().parents[2] / "schemas" / "invalidation-notice.avsc").read_text()))
data = bytes.fromhex(sys.argv[1])
assert data[0] == 0, "magic byte"
schema_id = struct.unpack(">I", data[1:5])[0]
record = fastavro.schemaless_reader(io.BytesIO(data[5:]), schema)
record["schema_id"] = schema_id
print(json.dumps(record))
