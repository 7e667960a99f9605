"""The operations that took the most time in a --profile-steps trace, summed over its steps.

    python benchmarks/trace_summary.py \
        WORKDIR/tensorboard/plugins/profile/<time>/<host>.trace.json.gz

Prints one line per operation name (an XLA fusion, a library call, a Python frame): its total
time in milliseconds, how many times it ran, and its name; the 25 largest first.
"""

import argparse
import collections
import gzip
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace", help="a *.trace.json.gz written by --profile-steps")
    parser.add_argument("--top", type=int, default=25, help="lines to print (%(default)s)")
    args = parser.parse_args()
    with gzip.open(args.trace) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    total, count = collections.Counter(), collections.Counter()
    for event in events:
        total[event["name"]] += event["dur"]  # microseconds
        count[event["name"]] += 1
    print(f"{'ms':>9s} {'calls':>6s}  name")
    for name, micros in total.most_common(args.top):
        print(f"{micros / 1000:9.1f} {count[name]:6d}  {name[:100]}")


if __name__ == "__main__":
    main()
