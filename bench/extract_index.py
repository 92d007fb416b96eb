"""Throughput of search index extraction (engine.search.extract.extract_index).

Times extraction over the FHIR R4 spec's example resources of the types sharedcare stores (Bundle
entries included), per type and overall, next to `orjson.loads` of the same documents in the same run
as a baseline for the machine; plus a typical vital-sign Observation (subject, encounter, code,
category, valueQuantity, effectiveDateTime), whose target is ≥ 5,000 extractions/s.
`--synthea` adds the Synthea records (≈ 23k resources).

Run from the repository root:  .venv/bin/python bench/extract_index.py [--seconds 0.3] [--synthea]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine.search.extract import extract_index
from engine.search.registry import SUPPORTED_TYPES

CORPORA = REPO.parent / "shared" / "corpora" / "fhir"
EXAMPLES = CORPORA / "FHIR-fhir-test-cases-r4-examples"
SYNTHEA = CORPORA / "synthea"
TARGET_PER_SECOND = 5_000

VITAL_SIGN = {
    "resourceType": "Observation",
    "id": "heart-rate-1",
    "meta": {
        "versionId": "1",
        "lastUpdated": "2024-03-01T10:16:02.123Z",
        "profile": ["http://hl7.org/fhir/StructureDefinition/heartrate"],
    },
    "status": "final",
    "category": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs",
                    "display": "Vital Signs",
                }
            ]
        }
    ],
    "code": {
        "coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}],
        "text": "Heart rate",
    },
    "subject": {"reference": "Patient/9434765919"},
    "encounter": {"reference": "Encounter/e-2024-03-01"},
    "effectiveDateTime": "2024-03-01T10:15:00+00:00",
    "valueQuantity": {
        "value": 72,
        "unit": "beats/minute",
        "system": "http://unitsofmeasure.org",
        "code": "/min",
    },
}


def documents(with_synthea: bool) -> dict[str, list[bytes]]:
    """Serialised resources of our types by type, from the examples (and Synthea if asked)."""
    paths = sorted(EXAMPLES.glob("*.json"))
    if with_synthea:
        paths += sorted(SYNTHEA.glob("*.json"))
    by_type: dict[str, list[bytes]] = defaultdict(list)
    for path in paths:
        document = orjson.loads(path.read_bytes().removeprefix(b"\xef\xbb\xbf"))
        entries = (
            [e.get("resource", {}) for e in document.get("entry", ())]
            if document["resourceType"] == "Bundle"
            else [document]
        )
        for resource in entries:
            if resource.get("resourceType") in SUPPORTED_TYPES:
                by_type[resource["resourceType"]].append(orjson.dumps(resource))
    return dict(sorted(by_type.items()))


def rate(work: Callable[[], Any], count: int, seconds: float) -> float:
    """Items per second of `work` (which handles `count` items), repeated for about `seconds`."""
    work()  # warm up
    rounds, started = 0, time.perf_counter()
    while True:
        work()
        rounds += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return rounds * count / elapsed


def measure(label: str, raw: Sequence[bytes], seconds: float) -> tuple[str, int, float, float]:
    parsed = [orjson.loads(b) for b in raw]
    extract = rate(lambda: [extract_index(r) for r in parsed], len(parsed), seconds)
    loads = rate(lambda: [orjson.loads(b) for b in raw], len(raw), seconds)
    return label, len(raw), extract, loads


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.3, help="time per measurement")
    parser.add_argument("--synthea", action="store_true", help="add the Synthea records")
    args = parser.parse_args(argv)
    if not EXAMPLES.is_dir():
        print(f"{EXAMPLES} is not there", file=sys.stderr)
        return 1
    by_type = documents(args.synthea)
    results = [measure(t, docs, args.seconds) for t, docs in by_type.items()]
    results.append(measure("all", [d for docs in by_type.values() for d in docs], args.seconds * 3))
    typical = measure("typical vital-sign Observation", [orjson.dumps(VITAL_SIGN)], args.seconds * 3)
    results.append(typical)
    print(f"{'resource type':<32} {'docs':>6} {'extract_index/s':>16} {'orjson.loads/s':>15} {'ratio':>7}")
    for label, count, extract, loads in results:
        print(f"{label:<32} {count:>6} {extract:>16,.0f} {loads:>15,.0f} {loads / extract:>6.0f}x")
    verdict = "meets" if typical[2] >= TARGET_PER_SECOND else "MISSES"
    print(f"\ntypical Observation: {typical[2]:,.0f}/s {verdict} the target of {TARGET_PER_SECOND:,}/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
