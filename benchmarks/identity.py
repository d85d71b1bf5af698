"""Cost of identity resolution (:mod:`processors.identity`, :mod:`processors.stitching`) per touchpoint.

    python benchmarks/identity.py [--customers 20000] [--touchpoints 200000] [--passes 5] [--stream 20000]

A touchpoint carries an anonymous id and, on a third of them, an e-mail address and a phone number
in producers' spellings. Timed, per touchpoint, the median over ``--passes`` (``timing.py``): extracting its
identifiers (normalise, refuse junk, pseudonymise with HMAC-SHA256), resolving them in a graph that
holds every customer's links, and linking them (the touchpoints that carry a customer id).

And the whole stream (``stream_*``): the generator's traffic, ``--stream`` touchpoints of 2,000
customers with and without its identity share (0.3: anonymous sessions that identify later,
contact-only e-mail, SMS and call touchpoints), through the batch planner with its own forwards,
claims and merges fed back (:class:`pipeline.runtime.loopback.Loopback`, no broker): microseconds of
planning per published touchpoint, hops included, and the records the hops added per touchpoint.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import us_per_item

from pipeline.runtime.loopback import Loopback
from processors.identity import IdentityGraph, IdentityRules, identifiers
from processors.pseudonym import Pseudonymizer
from processors.synthetic import JourneyGenerator


def touchpoints(customers: int, n: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        c = rng.randrange(customers)
        fields: dict[str, Any] = {"anonymous_id": f"device-{c:06d}-{rng.randrange(3)}"}
        if rng.random() < 1 / 3:
            fields["email"] = f"  Customer.{c}@Example-Shop.COM "
            fields["phone"] = f"+44 (0)20 {c // 10000:04d} {c % 10000:04d}"
        out.append((f"c{c}", fields))
    return out


def stream(n: int, identity: float, passes: int) -> tuple[float, float]:
    """Planner µs per published touchpoint, and records read per published touchpoint."""
    events = list(JourneyGenerator(customers=2_000, seed=3, identity=identity).events(n))
    timings, reads = [], 0
    for _ in range(passes):
        loop = Loopback.with_stitching(b"benchmark key, sixteen bytes+")
        loop.publish(events)
        began = time.perf_counter()
        reads = loop.run(batch=500)
        timings.append(time.perf_counter() - began)
    return statistics.median(timings) / n * 1e6, reads / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--touchpoints", type=int, default=200_000)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--stream", type=int, default=20_000)
    args = parser.parse_args()
    pseudonymize = Pseudonymizer(b"benchmark key, sixteen bytes+")
    work = touchpoints(args.customers, args.touchpoints, args.seed)
    found = [(c, identifiers(f, pseudonymize)) for c, f in work]
    graph = IdentityGraph(IdentityRules())
    for customer, ids in found:
        graph.link(customer, ids, at=0)
    result = {
        "touchpoints": args.touchpoints, "customers": args.customers,
        "identifiers_us": round(us_per_item(lambda w: identifiers(w[1], pseudonymize), work, args.passes), 2),
        "resolve_us": round(us_per_item(lambda f: graph.resolve(f[1]), found, args.passes), 2),
        "link_us": round(us_per_item(lambda f: graph.link(f[0], f[1], at=1), found, args.passes), 2),
        "linked_identifiers": len(graph.owner),
    }
    if args.stream:
        plain_us, _ = stream(args.stream, 0.0, args.passes)
        stitched_us, reads = stream(args.stream, 0.3, args.passes)
        result |= {"stream_us_without_identity": round(plain_us, 1), "stream_us_with_identity": round(stitched_us, 1),
                   "stream_reads_per_touchpoint": round(reads, 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
