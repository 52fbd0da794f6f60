"""Record ratings in a loop into a RatingStore; used by tests/test_ratings.py.

Usage: python record_loop.py DB RATER N [--print-ids]

Each rating is a distinct (case, condition) so every row stays current. After
``record`` returns, the returned row id and the case id are printed and stdout is
flushed: a line on stdout is a rating that was confirmed durable.
"""

from __future__ import annotations

import sys

from napari_neurosynth.ratings import RatingStore


def main() -> int:
    db, rater, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = RatingStore(db, timeout=60)
    print("ready", flush=True)
    for i in range(n):
        row = store.record(
            rater, f"case-{i:05d}", "acquired", 1 + i % 5, study="stress", comment=f"{rater} #{i}", seconds_on_case=0.5
        )
        print(f"{row} case-{i:05d}", flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
